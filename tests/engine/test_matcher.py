"""The engine on a small sigmoid MLP: exact recovery, schedules, guards, callbacks."""

import pytest
import torch
from torch import nn

from nlp_dlg.engine import ConfigError, GradientMatcher, MatchingConfig, MatchingPlugin, StepRecord


class MLPPlugin:
    """Dummy inputs x (B, 4) and soft labels (B, 3) for a 4-8-3 sigmoid MLP with cross-entropy."""

    def __init__(self, seed=0, nan_at=None, scale=1.0):
        torch.manual_seed(seed)
        self.scale = scale  # multiplies the loss: a small one makes every gradient (and distance) small
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 3))
        self.batch = 1
        self.calls = 0
        self.nan_at = nan_at

    def matched_parameters(self):
        return dict(self.net.named_parameters())

    def init_leaves(self, generator):
        return {"x": torch.randn(self.batch, 4, generator=generator),
                "y": torch.randn(self.batch, 3, generator=generator)}

    def task_loss(self, leaves):
        self.calls += 1
        loss = -(leaves["y"].softmax(-1) * self.net(leaves["x"]).log_softmax(-1)).sum(-1).mean() * self.scale
        return loss * float("nan") if self.calls == self.nan_at else loss

    def project(self, leaves):
        return None

    def observe(self, x, labels):
        self.batch = len(x)
        loss = nn.functional.cross_entropy(self.net(x), labels) * self.scale
        grads = torch.autograd.grad(loss, list(self.net.parameters()))
        return dict(zip(dict(self.net.named_parameters()), grads))


X = torch.tensor([[0.5, -1.0, 2.0, 0.3], [1.5, 0.2, -0.7, -1.1]])
LABELS = torch.tensor([2, 0])


def _run(plugin, target, **cfg):
    return GradientMatcher(plugin, MatchingConfig(**cfg)).run(target, generator=torch.Generator().manual_seed(0))


def test_plugin_satisfies_the_protocol():
    assert isinstance(MLPPlugin(), MatchingPlugin)


def test_lbfgs_recovers_input_and_label_exactly():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    result = _run(plugin, target, steps=50)
    assert result.distance < 1e-8
    assert torch.allclose(result.leaves["x"], X[:1], atol=1e-3)
    assert int(result.leaves["y"].argmax()) == 2


def test_normalize_unfreezes_lbfgs_on_an_objective_that_starts_small():
    # gradients 1e-4 of the usual: the distance starts ~1e-9, below torch L-BFGS's absolute thresholds
    plugin = MLPPlugin(scale=1e-4)
    target = plugin.observe(X[:1], LABELS[:1])
    raw = _run(plugin, target, steps=50)
    assert not torch.allclose(raw.leaves["x"], X[:1], atol=1e-1)  # frozen near the random start
    result = _run(plugin, target, steps=50, normalize=True)
    assert torch.allclose(result.leaves["x"], X[:1], atol=1e-3)
    assert int(result.leaves["y"].argmax()) == 2
    assert result.distance < raw.distance * 1e-6  # reported unscaled, in the same units as raw.distance


def test_normalize_leaves_an_objective_that_starts_above_one_as_it_is():
    plugin = MLPPlugin(scale=1e3)
    target = plugin.observe(X[:1], LABELS[:1])
    raw, lifted = _run(plugin, target, steps=3), _run(plugin, target, steps=3, normalize=True)
    assert raw.history[0] > 1 and raw.history == lifted.history
    torch.testing.assert_close(raw.leaves["x"], lifted.leaves["x"], rtol=0, atol=0)


def test_a_scaled_prior_keeps_the_exact_match_that_an_added_one_pulls_away_from():
    class Pulled(MLPPlugin):
        def regularizer(self, leaves):          # pulls x towards 0, away from the observed input
            return 0.1 * leaves["x"].pow(2).sum()

    plugin = Pulled()
    target = plugin.observe(X[:1], LABELS[:1])
    added, scaled = _run(plugin, target, steps=50), _run(plugin, target, steps=50, prior="scale")
    assert not torch.allclose(added.leaves["x"], X[:1], atol=1e-2)
    assert torch.allclose(scaled.leaves["x"], X[:1], atol=1e-3) and scaled.distance < 1e-8


def test_joint_schedule_recovers_a_batch_of_two():
    plugin = MLPPlugin()
    target = plugin.observe(X, LABELS)
    result = _run(plugin, target, steps=120, schedule="joint")
    got = result.leaves["x"]
    # the order inside a batch is not identifiable: compare as a set
    ok = torch.allclose(got, X, atol=1e-2) or torch.allclose(got.flip(0), X, atol=1e-2)
    assert ok, got


def test_per_sample_schedule_updates_sample_step_mod_b():
    plugin = MLPPlugin()
    target = plugin.observe(X, LABELS)
    seen = []
    GradientMatcher(plugin, MatchingConfig(steps=3, schedule="per-sample", optimizer="adam", lr=0.1),
                    callbacks=[seen.append]).run(target, generator=torch.Generator().manual_seed(0))
    x = [r.candidate["x"] for r in seen]  # after steps 0 (init), 1, 2, 3
    moved = [[not torch.equal(x[k][i], x[k - 1][i]) for i in range(2)] for k in (1, 2, 3)]
    assert moved == [[True, False], [False, True], [True, False]]


def test_adam_reduces_the_distance_by_orders_of_magnitude():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    records = []
    GradientMatcher(plugin, MatchingConfig(optimizer="adam", lr=0.05, steps=300),
                    callbacks=[records.append]).run(target, generator=torch.Generator().manual_seed(0))
    assert records[-1].best_distance < records[0].distance / 100
    assert records[-1].evaluations == 301  # one per Adam step, plus the initial evaluation


def test_non_finite_loss_restarts_from_best_and_never_returns_nan():
    plugin = MLPPlugin(nan_at=30)
    target = plugin.observe(X[:1], LABELS[:1])
    result = _run(plugin, target, steps=30)
    assert result.recoveries == 1
    assert all(torch.isfinite(t).all() for t in result.leaves.values())
    assert result.distance < 1e-6


def test_evaluation_cap_is_strict_inside_lbfgs_steps():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    result = _run(plugin, target, steps=100, max_evaluations=33)
    assert result.evaluations == 33


def test_callbacks_get_immutable_records_and_can_stop():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    seen: list[StepRecord] = []

    def callback(record):
        seen.append(record)
        record.candidate["x"].fill_(1e6)  # a copy: must not disturb the attack
        return record.step == 3

    result = GradientMatcher(plugin, MatchingConfig(steps=50), callbacks=[callback]).run(
        target, generator=torch.Generator().manual_seed(0))
    assert [r.step for r in seen] == [0, 1, 2, 3]
    assert result.steps == 3
    with pytest.raises(TypeError):
        seen[0].candidate["x"] = torch.zeros(1)  # read-only mapping
    with pytest.raises(AttributeError):
        seen[0].step = 9  # frozen
    assert torch.isfinite(result.leaves["x"]).all() and result.leaves["x"].abs().max() < 1e3


def test_ctrl_c_keeps_the_best_candidate():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])

    def interrupt(record):
        if record.step == 5:
            raise KeyboardInterrupt

    result = GradientMatcher(plugin, MatchingConfig(steps=50, restarts=3), callbacks=[interrupt]).run(
        target, generator=torch.Generator().manual_seed(0))
    assert result.interrupted and result.restart == 0
    assert result.distance == min(result.history)


def test_restarts_keep_the_lowest_distance():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    best_per_restart: dict[int, float] = {}

    def track(record):
        best_per_restart[record.restart] = record.best_distance

    result = GradientMatcher(plugin, MatchingConfig(steps=2, restarts=3), callbacks=[track]).run(
        target, generator=torch.Generator().manual_seed(1))
    assert len(best_per_restart) == 3 and len(set(best_per_restart.values())) == 3
    winner = min(best_per_restart, key=best_per_restart.get)
    assert result.restart == winner and result.distance == best_per_restart[winner]


def test_model_requires_grad_flags_are_restored():
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    for p in plugin.net.parameters():
        p.requires_grad_(False)
    _run(plugin, target, steps=1)
    assert not any(p.requires_grad for p in plugin.net.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "sgd"}, "optimizer: expected one of lbfgs, adam, got 'sgd'"),
    ({"steps": 0}, "steps: expected a positive integer, got 0"),
    ({"lr": -1.0}, "lr: expected a positive finite number"),
    ({"schedule": "random"}, "schedule: expected one of"),
    ({"distance": "l3"}, "distance: expected one of"),
    ({"prior": "multiply"}, "prior: expected one of add, scale, got 'multiply'"),
])
def test_config_errors_name_parameter_expected_and_actual(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        MatchingConfig(**kwargs)


def test_a_stalled_restart_is_abandoned_for_the_next_and_the_first_on_track_ends_the_search(caplog):
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    seen: list[tuple[int, int]] = []
    evaluations: dict[int, int] = {}

    def track(record):
        seen.append((record.restart, record.step))
        evaluations[record.restart] = record.evaluations

    def run(drop):
        seen.clear()
        return GradientMatcher(plugin, MatchingConfig(steps=6, restarts=3, stall_step=2, stall_drop=drop),
                               callbacks=[track]).run(target, generator=torch.Generator().manual_seed(0))

    with caplog.at_level("INFO", logger="nlp_dlg.engine.matcher"):
        never = run(1e-300)           # no start falls that far by step 2: each but the last is abandoned there
    assert never.abandoned == 2 and {r for r, _ in seen} == {0, 1, 2}
    assert max(s for r, s in seen if r < 2) == 2 and max(s for r, s in seen if r == 2) == 6
    # the callbacks saw every evaluation but the last restart's final one, of the point its last step moved to
    assert never.total_evaluations == sum(evaluations.values()) + 1
    assert "stalls" in caplog.text
    first = run(0.999)                # the first start falls: it runs all its steps and no other starts
    assert first.abandoned == 0 and not first.stalled and {r for r, _ in seen} == {0}
    assert first.steps == 6 and first.total_evaluations == first.evaluations
    with pytest.raises(ConfigError, match="stall_drop"):
        MatchingConfig(stall_drop=1.0)


def test_leading_parameters_keep_the_input_layers_and_the_first_blocks_only():
    from nlp_dlg.engine.blocks import leading_parameters

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, 4)
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.small = nn.ModuleList([nn.Linear(1, 1)])       # a smaller list is not the block stack
            self.head = nn.Linear(4, 2)

    net = Net()
    named = dict(net.named_parameters())
    assert set(leading_parameters(net, named, 1)) == {"embed.weight", "embed.bias", "blocks.0.weight", "blocks.0.bias"}
    assert set(leading_parameters(net, named, 0)) == {"embed.weight", "embed.bias"}
    assert leading_parameters(net, named, None) == named
    assert set(leading_parameters(net, named, 9)) == set(named) - {"head.weight", "head.bias", "small.0.weight",
                                                                   "small.0.bias"}
    with pytest.raises(ConfigError, match="no list of repeated blocks"):
        leading_parameters(nn.Linear(2, 2), {}, 1)


def test_the_result_can_be_the_point_the_last_step_moved_to():
    """A step ends with an update it has not evaluated: the restart evaluates it, so the candidate the last
    callback saw is returned when it matches best."""
    plugin = MLPPlugin()
    target = plugin.observe(X[:1], LABELS[:1])
    seen = []
    result = GradientMatcher(plugin, MatchingConfig(steps=3, lbfgs_max_iter=1), callbacks=[seen.append]).run(
        target, generator=torch.Generator().manual_seed(0))
    assert seen[-1].evaluations == 4 and result.evaluations == 5     # the first point, 3 steps of 1, the last
    assert result.distance < min(r.distance for r in seen)
    assert all(torch.equal(result.leaves[k], seen[-1].candidate[k]) for k in result.leaves)
