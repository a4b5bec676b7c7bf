"""Removing training makes the learning tests fail, for every trained model.

For each trained model in turn, its update step is replaced by a no-op (the optimizer step of
:func:`recsys_ref.training.gradient_step` as that model's module calls it, the ALS and iALS
solves, MAML's outer or inner step, the reward model's Newton step, the bandits' ridge
update, the closed forms of EASE and the biases) and the model's tests of
``tests/test_learning.py`` are run: at least one of them must fail with an
``AssertionError``. A model whose training could be deleted without a test noticing fails here.
"""

import types
from functools import partial
from pathlib import Path

import pytest
import test_learning as L
import torch

import recsys_ref
from recsys_ref.bandits import LinearTS, LinUCB, NeuralLinearTS
from recsys_ref.few_shot import MAML, MeLU


def no_step(optimizer, loss):
    """gradient_step without the step: the loss is still computed and reported."""
    return loss.item()


def no_biases(R, mask, reg_u, reg_i, n_iters):
    """fit_biases without the sweeps: the global mean and zero biases."""
    mu = float(R.double()[mask].mean())
    return mu, torch.zeros(R.shape[0], dtype=torch.float64), torch.zeros(
        R.shape[1], dtype=torch.float64)


class TorchWithoutNewtonStep:
    """``torch`` as the reward model sees it, except that the Newton step solves to zero."""

    linalg = types.SimpleNamespace(solve=lambda H, g: torch.zeros_like(g))

    def __getattr__(self, name):
        return getattr(torch, name)


def step(module: str):
    return [(f"{module}.gradient_step", no_step)]


MAML_STEP = step("recsys_ref.few_shot.maml")
MAML_INNER = [("recsys_ref.few_shot.maml.inner_adapt", lambda net, params, *a, **k: dict(params))]
RIDGE = [("recsys_ref.bandits.linear.RidgeStatistics.update", lambda self, X, y: None)]

# model -> (patches that remove its training, its learning tests)
REMOVALS = {
    "BiasBaseline": ([("recsys_ref.models.baselines.fit_biases", no_biases)],
                     [L.test_bias_baseline_learns_planted_biases]),
    "EASE": ([("recsys_ref.models.ease.ease_weights",
               lambda X, lam: torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64))],
             [L.test_ease_learns_planted_groups]),
    "BiasedMF (sgd)": ([("recsys_ref.models.mf.sgd_step", lambda *a, **k: 0.0)],
                       [partial(L.test_biased_mf_learns_planted_factors, "sgd")]),
    "BiasedMF (adam)": (step("recsys_ref.models.mf"),
                        [partial(L.test_biased_mf_learns_planted_factors, "adam")]),
    "BiasedMF (als)": ([("recsys_ref.models.mf.als_step", lambda *a, **k: None)],
                       [partial(L.test_biased_mf_learns_planted_factors, "als")]),
    **{f"BPR ({opt})": (step("recsys_ref.models.bpr"),
                        [partial(L.test_bpr_learns_planted_groups, opt, lr)])
       for opt, lr in L.BPR_OPTIMIZERS},
    "BPR (distributed)": (step("recsys_ref.distributed"),
                          [L.test_distributed_bpr_learns_planted_groups]),
    "iALS": ([("recsys_ref.models.ials.ials_step", lambda W, *a, **k: W)],
             [L.test_ials_learns_planted_groups]),
    **{f"NCF ({m})": (step("recsys_ref.models.ncf"), [partial(L.test_ncf_learns_planted_groups, m)])
       for m in ("gmf", "mlp", "neumf")},
    **{f"TwoTower ({loss})": (step("recsys_ref.models.two_tower"),
                              [partial(L.test_two_tower_learns_planted_groups, loss)])
       for loss in ("inbatch", "softmax", "bpr")},
    **{f"AutoRec ({opt})": (step("recsys_ref.models.autorec"),
                            [partial(L.test_autorec_learns_planted_factors, opt)])
       for opt in ("adam", "rprop")},
    "SASRec": (step("recsys_ref.models.sasrec"), [L.test_sasrec_learns_planted_cycles]),
    "BERT4Rec": (step("recsys_ref.models.bert4rec"), [L.test_bert4rec_learns_planted_cycles]),
    **{f"pretrain ({obj})": (step("recsys_ref.pretraining"),
                             [partial(L.test_pretraining_lowers_the_pretext_loss, obj)])
       for obj in ("cloze", "contrastive", "next")},
    "LikeClassifier": (step("recsys_ref.models.like_classifier"),
                       [L.test_like_classifier_learns_a_planted_taste]),
    "MAML (outer step)": (MAML_STEP, [partial(L.test_meta_learning_learns_to_adapt, MAML)]),
    "MAML (inner step)": (MAML_INNER, [partial(L.test_meta_learning_learns_to_adapt, MAML)]),
    "MeLU (outer step)": (MAML_STEP, [partial(L.test_meta_learning_learns_to_adapt, MeLU)]),
    "MeLU (inner step)": (MAML_INNER, [partial(L.test_meta_learning_learns_to_adapt, MeLU)]),
    "FineTuneMF": (step("recsys_ref.few_shot.fine_tune"), [L.test_fine_tuning_learns_new_users]),
    "LogisticRewardModel": ([("recsys_ref.bandits.reward_model.torch",
                              TorchWithoutNewtonStep())],
                            [L.test_logistic_reward_model_learns_planted_effects]),
    **{f"{cls.__name__}": (RIDGE, [partial(L.test_linear_bandits_learn_planted_preferences, cls)])
       for cls in (LinUCB, LinearTS, NeuralLinearTS)},
}


@pytest.mark.parametrize("model", list(REMOVALS))
def test_removing_training_fails_a_learning_test(model, monkeypatch):
    patches, tests = REMOVALS[model]
    for target, replacement in patches:
        monkeypatch.setattr(target, replacement)  # raises if the target no longer exists
    failed = []
    for test in tests:
        try:
            test()
        except AssertionError:
            failed.append(test)
    assert failed, f"{model}: its training was removed and all of {tests} still pass"


def test_every_learning_test_guards_a_model():
    guarded = {getattr(t, "func", t).__name__ for _, tests in REMOVALS.values() for t in tests}
    assert guarded == {name for name in dir(L) if name.startswith("test_")}


def test_every_module_that_takes_gradient_steps_is_covered():
    """A new model that calls gradient_step must get its entry in REMOVALS (each module imports
    the function by name, so patching ``recsys_ref.training.gradient_step`` alone removes
    nothing)."""
    root = Path(recsys_ref.__file__).parent
    callers = {".".join(p.relative_to(root.parent).with_suffix("").parts)
               for p in root.rglob("*.py")
               if p.name != "training.py" and "gradient_step(" in p.read_text()}
    patched = {target.rsplit(".", 1)[0] for patches, _ in REMOVALS.values()
               for target, _ in patches if target.endswith(".gradient_step")}
    assert callers == patched
