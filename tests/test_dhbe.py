"""DHBE: generators, trigger placement, each player's update, the jitted iteration against an
eager reference, resumption, and 1 vs 4 devices."""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from backdoor_core import rundir
from backdoor_core.checkpoint import TrainCheckpoints
from backdoor_core.errors import InputError
from backdoor_core.interrupt import stop_on_signals
from backdoor_core.models import ModelSpec, build_model, init_variables
from backdoor_core.sharding import replicate
from dhbe_jax import DHBEConfig, erase, synthesize
from dhbe_jax import generators as gens
from dhbe_jax.erase import compiled_iteration
from dhbe_jax.losses import balance_loss, confidence_loss, l1_logits, tv_l1, tv_l2
from dhbe_jax.step import (_Forward, _generator_update, _student_update, _trigger_update, _warmup_step, init_state,
                           make_generator_warmup, make_players, trigger_lr_schedule)
from dhbe_jax.triggers import add_full_triggers, add_patches, pad_patches, random_positions

from conftest import jit_once

# The erase CLI's test runs this same configuration on the same teacher (test_erase_cli.smoke), so
# the suite compiles this iteration once. balance_weight > 0 (the cpu config's G loss) is covered
# by the jitted-vs-eager check along with the official terms.
TINY = DHBEConfig(iterations=6, batch_size=8, student_steps=2, ngf=8, nz=16, nz_trigger=16, patch_size=3,
                  student_lr=0.01, balance_weight=0.5)


@pytest.fixture(scope="module")
def teacher(badnets_run):
    """(spec, variables) of the session's BadNets small_cnn (conftest): a real backdoored teacher."""
    spec, _, variables = rundir.load_model(badnets_run)
    return spec, variables


def tree_close(a, b, **tol):
    """Same tree structure (no leaf skipped by zip) and every leaf close."""
    assert jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.leaves(a)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **tol)


def test_generator_shapes_and_ranges():
    z = jax.random.normal(jax.random.PRNGKey(0), (6, 16))
    for module, shape, lo, hi in [(gens.SampleGenerator((32, 32, 3), 8), (6, 32, 32, 3), 0.0, 1.0),
                                  (gens.PatchTriggerGenerator(5, 3), (6, 5, 5, 3), -1.0, 1.0),
                                  (gens.FullTriggerGenerator((28, 28, 1), 8), (6, 28, 28, 1), -1.0, 1.0)]:
        params = gens.init_params(module, jax.random.PRNGKey(1), 16)
        out = jax.jit(gens.apply_train_mode, static_argnums=0)(module, params, z)
        assert out.shape == shape
        assert float(out.min()) >= lo and float(out.max()) <= hi
        assert float(out.std()) > 0.05  # not collapsed at initialisation


@pytest.mark.parametrize("per_sample", [False, True])
def test_patch_lands_inside_the_image_at_every_position(per_sample):
    h, w, p = 10, 7, 4
    patches = jnp.ones((500, p, p, 2))
    positions = random_positions(jax.random.PRNGKey(0), 500, (h, w), p, per_sample)
    canvas = np.asarray(pad_patches(patches, positions, (h, w)))
    assert np.all(canvas.sum(axis=(1, 2, 3)) == p * p * 2)  # nothing fell off the edge
    for img, (y, x) in zip(canvas, np.asarray(positions)):
        assert np.all(img[y:y + p, x:x + p] == 1)
    distinct = {tuple(q) for q in np.asarray(positions)}
    reachable = {(y, x) for y in range(h - p + 1) for x in range(w - p + 1)}
    assert distinct <= reachable
    # One position for the batch, else all 28 (the last row and column too) among 500 draws.
    assert (distinct == reachable) if per_sample else len(distinct) == 1


def test_triggered_images_are_clipped_and_local():
    x = jnp.full((4, 8, 8, 1), 0.5)
    patches = jnp.ones((4, 3, 3, 1))
    out = np.asarray(add_patches(jax.random.PRNGKey(0), x, patches))
    assert out.max() == 1.0 and np.sum(out != 0.5) == 4 * 9
    full = np.asarray(add_full_triggers(x, -jnp.ones_like(x), sigma=0.2 * 64))
    np.testing.assert_allclose(full, 0.3, rtol=1e-6)


def test_tv_losses_on_a_known_image():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
    # In each of the 4 directions the lit pixel enters exactly 2 differences, each of size 1.
    assert float(tv_l2(x)) == pytest.approx(4 * np.sqrt(2.0))
    assert float(tv_l1(x)) == pytest.approx(2 / 6 + 2 / 6 + 2 / 4 + 2 / 4)
    assert float(l1_logits(jnp.ones((2, 3)), jnp.zeros((2, 3)))) == 1.0


def _players_state(teacher, config=TINY, mesh=None):
    from backdoor_core.sharding import make_mesh
    mesh = mesh or make_mesh(1)
    players, _ = compiled_iteration(teacher[0], config, mesh)
    return (players, init_state(players, teacher[1], config, jax.random.PRNGKey(7)),
            _Forward(players, config, teacher[0].image_shape, mesh))


def test_each_player_decreases_its_own_loss(teacher):
    config = TINY
    players, state, f = _players_state(teacher, config)
    # Make the student differ from the teacher so that D > 0.
    state = state.replace(student=jax.tree.map(lambda v: v * 1.1, state.student))
    key = jax.random.PRNGKey(3)
    kx, kt = jax.random.split(key)

    def student_loss(student):
        x = f.synthesize(state.generator, kx)
        s, stats = f.student(student["params"], student["batch_stats"], x)
        r, _ = f.restriction(student["params"], stats, s, f.triggered(state.trigger, kt, x))
        return l1_logits(s, f.teacher(teacher[1], x)) + config.lam * r

    def generator_loss(generator):
        x = f.synthesize(generator, key)
        s, _ = f.student(state.student["params"], state.student["batch_stats"], x)
        t = f.teacher(teacher[1], x)
        return -l1_logits(s, t) + config.tv_l2_weight * tv_l2(x) + config.balance_weight * balance_loss(t)

    def trigger_loss(trigger):
        x = f.synthesize(state.generator, kx)
        s, stats = f.student(state.student["params"], state.student["batch_stats"], x)
        return -f.restriction(state.student["params"], stats, s, f.triggered(trigger, kt, x))[0]

    @jit_once
    def before_and_after():
        (student, _), _ = _student_update(f, state, teacher[1], (state.student, state.student_opt), key)
        after_g, _ = _generator_update(f, state, teacher[1], key)
        after_p, _ = _trigger_update(f, state, key)
        return ((student_loss(state.student), student_loss(student)),
                (generator_loss(state.generator), generator_loss(after_g.generator)),
                (trigger_loss(state.trigger), trigger_loss(after_p.trigger)))

    for before, after in before_and_after():
        assert float(after) < float(before)


def reference_iteration(players, config, state, teacher_vars, image_shape):
    """DHBE's iteration written out eagerly: Python loop, one value_and_grad per update. G's loss
    has the official terms plus the cpu config's class-balance term."""
    model, sigma = players.model, config.sigma(image_shape)
    key, k_student, k_gen, k_trig = jax.random.split(state.key, 4)

    def gen(params, module, z):
        return module.apply({"params": params}, z, mutable=["batch_stats"])[0]

    def student(params, stats, x):
        out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return out, upd["batch_stats"]

    def triggered(trig, key, x):
        (kpz, kpos), (kfz, _) = [jax.random.split(k) for k in jax.random.split(key, 2)]
        p1 = gen(trig["patch"], players.patch, jax.random.normal(kpz, (config.batch_size, config.nz_trigger)))
        p2 = gen(trig["full"], players.full, jax.random.normal(kfz, (config.batch_size, config.nz_trigger)))
        return [add_patches(kpos, x, p1), jnp.clip(x + sigma / (image_shape[0] * image_shape[1]) * p2, 0, 1)]

    def restriction(params, stats, s, xs):
        r = 0.0
        for xp in xs:
            sp, stats = student(params, stats, xp)
            r = r + jnp.mean(jnp.abs(sp - jax.lax.stop_gradient(s)))
        return r / len(xs), stats

    st, opt = state.student, state.student_opt
    for k in jax.random.split(k_student, config.student_steps):
        kx, kt = jax.random.split(k)
        x = gen(state.generator, players.generator, jax.random.normal(kx, (config.batch_size, config.nz)))
        t = model.apply(teacher_vars, x, train=False)
        xs = triggered(state.trigger, kt, x)

        def loss_s(p):
            s, stats = student(p, st["batch_stats"], x)
            r, stats = restriction(p, stats, s, xs)
            return jnp.mean(jnp.abs(s - t)) + config.lam * r, stats

        (_, stats), g = jax.value_and_grad(loss_s, has_aux=True)(st["params"])
        upd, opt = players.student_tx.update(g, opt, st["params"])
        st = {"params": optax.apply_updates(st["params"], upd), "batch_stats": stats}

    def loss_g(gp):
        x = gen(gp, players.generator, jax.random.normal(k_gen, (config.batch_size, config.nz)))
        s, stats = student(st["params"], st["batch_stats"], x)
        t = model.apply(teacher_vars, x, train=False)
        return (-jnp.mean(jnp.abs(s - t)) + config.tv_l2_weight * tv_l2(x)
                + config.balance_weight * balance_loss(t)), stats

    (_, stats), g = jax.value_and_grad(loss_g, has_aux=True)(state.generator)
    upd, g_opt = players.generator_tx.update(g, state.generator_opt, state.generator)
    generator = optax.apply_updates(state.generator, upd)
    st = {**st, "batch_stats": stats}
    kx, kt = jax.random.split(k_trig)
    x = gen(generator, players.generator, jax.random.normal(kx, (config.batch_size, config.nz)))
    s, stats = student(st["params"], st["batch_stats"], x)
    (_, stats), g = jax.value_and_grad(lambda tp: (lambda r: (-r[0], r[1]))(restriction(st["params"], stats, s, triggered(tp, kt, x))), has_aux=True)(state.trigger)
    upd, t_opt = players.trigger_tx.update(g, state.trigger_opt, state.trigger)
    return state.replace(iteration=state.iteration + 1, student={**st, "batch_stats": stats}, generator=generator,
                         trigger=optax.apply_updates(state.trigger, upd), student_opt=opt, generator_opt=g_opt,
                         trigger_opt=t_opt, key=key)


def test_jitted_iteration_matches_eager_reference(teacher, mesh1):
    players, iteration = compiled_iteration(teacher[0], TINY, mesh1)
    state = init_state(players, teacher[1], TINY, jax.random.PRNGKey(7))
    expected = jit_once(lambda s, t: reference_iteration(players, TINY, s, t, teacher[0].image_shape))(state, teacher[1])
    got, metrics = iteration(replicate(mesh1, state), replicate(mesh1, teacher[1]))
    tree_close(got.student, expected.student, rtol=1e-4, atol=1e-5)
    tree_close(got.student_opt, expected.student_opt, rtol=1e-4, atol=1e-5)
    # G and G_p take one Adam step, about lr * g / (|g| + 1e-8): for the biases that batch norm
    # cancels (true gradient 0) that is lr times the sign of rounding noise. Adam's moments hold
    # the gradients themselves (mu = 0.1 g, nu = 0.001 g^2) and are compared everywhere; the
    # parameters wherever the gradient stands above rounding.
    for params, opt in [("generator", "generator_opt"), ("trigger", "trigger_opt")]:
        tree_close(getattr(got, opt), getattr(expected, opt), rtol=1e-3, atol=1e-7)
        mu = optax.tree_utils.tree_get(getattr(expected, opt), "mu")
        for p_got, p_expected, m in zip(*(jax.tree.leaves(t) for t in (getattr(got, params), getattr(expected, params), mu))):
            live = np.abs(np.asarray(m)) > 1e-6  # rounding: below 1e-8 here
            np.testing.assert_allclose(np.asarray(p_got)[live], np.asarray(p_expected)[live], rtol=0, atol=1e-5)
    assert set(metrics) == {"loss_student", "D", "R", "loss_G", "loss_Gp"}
    for _ in range(2):
        got, _ = iteration(got, replicate(mesh1, teacher[1]))
    assert iteration._cache_size() == 1  # one compiled program, never retraced


def test_resume_equals_uninterrupted(teacher, mesh1, tmp_path):
    full = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "a", progress=False)
    part = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "b", stop_after=4,
                 checkpoint_every=2, log_every=1, progress=False)
    assert not part.complete
    resumed = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "b", log_every=1, progress=False)
    assert resumed.complete
    tree_close(full.variables, resumed.variables, rtol=0, atol=0)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_resumed_elapsed_time_goes_on_from_the_earlier_attempt(teacher, mesh1, tmp_path):
    """elapsed_s in a resumed run's history counts the earlier attempts' time too (the tables'
    wall time of a DHBE run is its last elapsed_s)."""
    run = tmp_path / "b"
    erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=run, stop_after=4, checkpoint_every=2,
          log_every=1, progress=False)
    rows = rundir.read_history(run)
    rundir.truncate_history(run, -1)
    for row in rows:  # pretend the first attempt took 1000 s
        rundir.append_history(run, {**row, "elapsed_s": 1000.0 + row["elapsed_s"]} if row["step"] == 4 else row)
    resumed = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=run, log_every=1, progress=False)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    elapsed = [r["elapsed_s"] for r in resumed.history]
    assert 1000.0 < elapsed[3] < elapsed[4] < elapsed[5]


def test_sigterm_stops_after_the_iteration_in_flight_and_resumes_equal(teacher, mesh1, tmp_path):
    """Under the CLI's handler a SIGTERM (a scheduler's, a time limit's) or Ctrl-C ends the run after
    the current iteration with a checkpoint, although none was due, and the resumed run matches."""
    full = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, progress=False)
    sent = []

    def eval_fn(variables):  # called at the end of iteration 2, after its stop check: iteration 3 is the last
        if not sent:
            os.kill(os.getpid(), signal.SIGTERM)
            sent.append(True)
        return {}

    with stop_on_signals():
        part = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "b", eval_fn=eval_fn,
                     eval_every=2, checkpoint_every=100, log_every=1, progress=False)
    assert not part.complete and int(part.state.iteration) == 3
    assert TrainCheckpoints(tmp_path / "b" / rundir.CHECKPOINTS).latest_step() == 3
    resumed = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "b", log_every=1, progress=False)
    assert resumed.complete
    tree_close(full.variables, resumed.variables, rtol=0, atol=0)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_four_devices_match_one(teacher, mesh1, mesh4):
    one = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, stop_after=2, progress=False)
    four = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh4, stop_after=2, progress=False)
    tree_close(one.variables, four.variables, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("change,message", [
    (dict(patch_size=40), "patch_size = 40"), (dict(trigger_families=("huge",)), "trigger_families"),
    (dict(batch_size=1), "batch_size = 1"), (dict(lam=-1.0), "lam = -1.0"),
    (dict(generator_warmup=-5), "generator_warmup = -5"), (dict(balance_weight=-1.0), "balance_weight"),
    (dict(average_start=1.0), "average_start = 1.0"), (dict(ngf=-1), "ngf = -1"), (dict(nz=0), "nz = 0"),
    (dict(student_lr=0.0), "student_lr = 0.0"), (dict(student_momentum=1.0), "student_momentum = 1.0"),
    (dict(trigger_lr=-1e-3), "trigger_lr"), (dict(student_warmup=6), "student_warmup = 6"),
    (dict(full_sigma=0.0), "full_sigma = 0.0"), (dict(tv_l1_weight=-1.0), r"tv_l2_weight / tv_l1_weight = \(0.0001, -1.0\)"),
    (dict(trigger_lr_milestones=(0.5, 1.0)), r"trigger_lr_milestones = \(0.5, 1.0\)"),
])
def test_bad_configs(teacher, change, message):
    with pytest.raises(InputError, match=message):
        erase(teacher, dataclasses.replace(TINY, **change), jax.random.PRNGKey(0), progress=False)


def test_trigger_lr_follows_the_common_milestones_unless_given_its_own():
    # 100 iterations, milestones at 60% and 80%: G_p has one update per iteration, the student 5.
    config = DHBEConfig(iterations=100, trigger_lr=1e-3)
    official = trigger_lr_schedule(config)
    assert [float(official(i)) for i in (0, 59, 60, 79, 80, 99)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    held = trigger_lr_schedule(dataclasses.replace(config, trigger_lr_milestones=()))
    assert [float(held(i)) for i in (0, 60, 99)] == pytest.approx([1e-3] * 3)
    late = trigger_lr_schedule(dataclasses.replace(config, trigger_lr_milestones=(0.9,)))
    assert [float(late(i)) for i in (80, 89, 90)] == pytest.approx([1e-3, 1e-3, 1e-4])
    # and G_p's optimiser takes it: under a constant gradient Adam's update is -lr * sign(g) (up to
    # eps), so its 70th update shows the lr then in force; G's keeps the common milestones.
    model = build_model(ModelSpec("small_cnn", 10, (28, 28, 1), width=0.25))
    for c, want in ((config, 1e-4), (dataclasses.replace(config, trigger_lr_milestones=()), 1e-3)):
        players = make_players(model, (28, 28, 1), c)
        for tx, lr in ((players.trigger_tx, want), (players.generator_tx, 1e-4)):
            params, grads = {"w": jnp.ones(3)}, {"w": jnp.array([1.0, -2.0, 3.0])}
            state = tx.init(params)
            for _ in range(70):
                updates, state = tx.update(grads, state, params)
            np.testing.assert_allclose(updates["w"], [-lr, lr, -lr], rtol=1e-3)


def test_student_average_is_the_mean_of_the_students_after_its_start(teacher, mesh1):
    """average_start = 0.5 of 6 iterations: the result is the plain mean of the students after
    iterations 4, 5 and 6 (recorded one iteration at a time), the run itself is unchanged, and the
    history logs the average's metrics beside the student's once it has begun."""
    config = dataclasses.replace(TINY, average_start=0.5)
    assert config.averaged_after == 3
    players, iteration = compiled_iteration(teacher[0], config, mesh1)
    state = replicate(mesh1, init_state(players, teacher[1], config, jax.random.PRNGKey(1)))
    t = replicate(mesh1, teacher[1])
    students = []
    for _ in range(config.iterations):
        state, _ = iteration(state, t)
        students.append(jax.device_get(state.student))
    mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *students[3:])
    tree_close(jax.device_get(state.average), mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(mean)[0], jax.tree.leaves(students[-1])[0])  # not the last one

    calls = []
    eval_fn = lambda v: calls.append(v) or {"test_acc": float(len(calls))}
    averaged = erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, eval_fn=eval_fn, eval_every=2,
                     log_every=1, progress=False)
    plain = erase(teacher, TINY, jax.random.PRNGKey(1), mesh=mesh1, progress=False)
    tree_close(averaged.variables, mean, rtol=1e-5, atol=1e-6)
    tree_close(averaged.state.student, plain.variables, rtol=0, atol=0)  # averaging does not steer the run
    assert [sorted(r) for r in averaged.history if r["step"] in (2, 4)] == [
        sorted(set(averaged.history[0]) | {"test_acc"}), sorted(set(averaged.history[0]) | {"test_acc", "average_test_acc"})]


def test_resume_with_student_average(teacher, mesh1, tmp_path):
    """Stopped at iteration 4, inside the average (iterations 4-6), and resumed: the same result."""
    config = dataclasses.replace(TINY, average_start=0.5)
    full = erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, progress=False)
    erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path, stop_after=4, checkpoint_every=2,
          progress=False)
    resumed = erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path, progress=False)
    tree_close(full.variables, resumed.variables, rtol=0, atol=0)


def test_balance_and_confidence_losses():
    k = 4
    one_class = jnp.tile(jnp.array([[30.0, 0, 0, 0]]), (8, 1))
    spread = 30.0 * jnp.tile(jnp.eye(k), (2, 1))  # confident, two images per class
    assert float(balance_loss(one_class)) == pytest.approx(np.log(k), abs=1e-5)
    assert float(balance_loss(spread)) == pytest.approx(0.0, abs=1e-5)
    assert float(confidence_loss(spread)) == pytest.approx(0.0, abs=1e-5)
    assert float(confidence_loss(jnp.zeros((3, k)))) == pytest.approx(np.log(k), abs=1e-5)


def test_generator_warmup_spreads_the_teachers_predictions_and_moves_only_G(mesh1):
    # A freshly initialised small teacher on which G's first images fall in a few classes (the
    # trained BadNets teacher already spreads them: balance 0.53 of log 10, 0.56 after warm-up).
    spec = ModelSpec("small_cnn", 10, (28, 28, 1), 0.25, (0.13,), (0.3,))
    teacher = (spec, init_variables(spec, jax.random.PRNGKey(0)))
    config = dataclasses.replace(TINY, batch_size=32, generator_warmup=60)
    players, state, f = _players_state(teacher, config)
    teacher_vars = replicate(mesh1, teacher[1])
    balance = jax.jit(lambda generator: balance_loss(f.teacher(teacher_vars, f.synthesize(generator, jax.random.PRNGKey(3)))))
    before = float(balance(state.generator))
    student, trigger = jax.device_get(state.student), jax.device_get(state.trigger)
    warmed, metrics = make_generator_warmup(players, config, spec.image_shape, mesh1)(state, teacher_vars)
    after = float(balance(warmed.generator))
    assert after < 0.5 * before, (before, after)
    assert float(metrics["warmup_balance"]) < before
    tree_close(student, warmed.student, rtol=0, atol=0)
    tree_close(trigger, warmed.trigger, rtol=0, atol=0)
    # One program for all 60 steps: the first call's inputs are placed as the step's outputs (its
    # fresh optimiser state, made on one device, had compiled the step a second time).
    step = _warmup_step(players, dataclasses.replace(config, generator_warmup=0), tuple(spec.image_shape), mesh1)[1]
    assert step._cache_size() == 1


def test_resume_with_generator_warmup(teacher, mesh1, tmp_path):
    config = dataclasses.replace(TINY, generator_warmup=3)  # the game's program is TINY's (compiled_iteration)
    full = erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "a", progress=False)
    part = erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "b", stop_after=2,
                 checkpoint_every=2, log_every=1, progress=False)
    assert not part.complete and [r["step"] for r in part.history] == [0, 1, 2]
    resumed = erase(teacher, config, jax.random.PRNGKey(1), mesh=mesh1, run_dir=tmp_path / "b", log_every=1, progress=False)
    assert resumed.complete
    tree_close(full.variables, resumed.variables, rtol=0, atol=0)
    assert [r["step"] for r in resumed.history] == [0, 1, 2, 3, 4, 5, 6]
    assert "warmup_balance" in resumed.history[0]
    # One program for the game with or without a warm-up before it (and after a restore).
    assert compiled_iteration(teacher[0], config, mesh1)[1]._cache_size() == 1


def test_synthesize_gives_seeded_images_in_range_spread_over_the_classes(mesh1):
    # The fresh teacher of the warm-up test, on which an untrained G's images fall in a few classes.
    spec = ModelSpec("small_cnn", 10, (28, 28, 1), 0.25, (0.13,), (0.3,))
    variables = init_variables(spec, jax.random.PRNGKey(0))
    config = dataclasses.replace(TINY, batch_size=32)
    make = lambda steps, seed=0: synthesize(spec, variables, 50, jax.random.PRNGKey(seed), steps=steps,
                                            config=config, mesh=mesh1)
    untrained, none = make(0)
    fitted, metrics = make(30)
    assert none == {} and set(metrics) == {"warmup_balance", "warmup_confidence"}
    for images in (untrained, fitted):
        assert images.shape == (50, 28, 28, 1) and images.dtype == np.float32  # 50: not a multiple of the batch
        assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(fitted, make(30)[0])
    assert not np.allclose(fitted, make(30, seed=1)[0])
    model = build_model(spec)
    balance = lambda images: float(balance_loss(model.apply(variables, images, train=False)))
    assert balance(fitted) < 0.5 * balance(untrained), (balance(untrained), balance(fitted))
    with pytest.raises(InputError, match="num_images = 0"):
        synthesize(spec, variables, 0, jax.random.PRNGKey(0), mesh=mesh1)
    with pytest.raises(InputError, match="steps = -1"):
        synthesize(spec, variables, 4, jax.random.PRNGKey(0), steps=-1, mesh=mesh1)
