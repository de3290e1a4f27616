"""The recipe runner: skip on unchanged, resume after a failed step, dry run, arms sharing their
common steps, and Slurm scripts chained by dependencies (run on the real one-node Slurm)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, ok, run

STEP = """
import argparse, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--src"); p.add_argument("--text"); p.add_argument("--config")
p.add_argument("--fail-if", default="")
a = p.parse_args()
if a.fail_if and pathlib.Path(a.fail_if).exists():
    raise SystemExit(f"failing on purpose: {a.fail_if} exists")
before = (pathlib.Path(a.src) / "value.txt").read_text() if a.src else ""
(pathlib.Path(a.out) / "value.txt").write_text(before + a.text)
with open(pathlib.Path(a.out).parent.parent / "runs.log", "a") as log:
    log.write(pathlib.Path(a.out).name.split("-")[0] + "\\n")
"""


def _recipe(tmp: Path, arms: str = "") -> Path:
    (tmp / "step.py").write_text(STEP)
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""name: toy
settings: {{script: {tmp / "step.py"}, flag: {tmp / "flag"}, lr: "1", source: "{{first}}"}}
steps:
  - {{name: first, run: "{{script}} --out {{out}} --text a", inputs: ["{{script}}"]}}
  - {{name: second, run: "{{script}} --out {{out}} --src {{source}} --text b --fail-if {{flag}}"}}
  - {{name: third, run: "{{script}} --out {{out}} --src {{second}} --text {{lr}}"}}
{arms}"""
    )
    return recipe


def _runs(out: Path) -> list[str]:
    return (out / "runs.log").read_text().split()


def _value(out: Path, arm: str, step: str, name: str = "value.txt") -> str:
    folders = json.loads((out / "arms" / f"{arm}.json").read_text())
    return (Path(folders[step]) / name).read_text()


def test_a_failed_step_resumes_and_unchanged_steps_are_skipped(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "out"
    (tmp_path / "flag").write_text("")
    failed = run(["tools/run_recipe.py", str(recipe), "--out", str(out)])
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step second failed (exit 1): see ") and "resume" in last
    (tmp_path / "flag").unlink()
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    assert _runs(out) == ["first", "second", "third"]  # first ran once, second resumed
    assert _value(out, "main", "third") == "ab1"
    again = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    assert _runs(out) == ["first", "second", "third"] and again.count(": done (") == 3
    (tmp_path / "step.py").write_text(STEP + "\n# changed\n")  # an input of the first step
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    assert _runs(out)[3:] == ["first", "second", "third"]  # everything downstream reruns


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "out"
    printed = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--dry-run"]))
    lines = [line for line in printed.splitlines() if line.startswith("[main]")]
    assert [line.split(":")[0] for line in lines] == [
        "[main] first",
        "[main] second",
        "[main] third",
    ]
    first = lines[0].split(": ", 1)[1].split()
    assert first[1] == str(tmp_path / "step.py") and first[2:4] == ["--out", first[3]]
    assert first[3].startswith(str(out / "steps" / "first-"))
    assert first[3] in lines[1]  # the second step reads the first one's folder
    assert not out.exists()
    dry = ["tools/run_recipe.py", str(recipe), "--out", str(out), "--dry-run"]
    printed = ok(run([*dry, "--set", "lr=7"]))
    assert "--text 7" in next(line for line in printed.splitlines() if "[main] third" in line)
    unknown = run([*dry, "--set", "lrate=7"])
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip().splitlines()[-1]
        == "error: --set lrate: not a setting of recipe.yaml"
    )


def test_arms_share_the_steps_they_agree_on(tmp_path):
    arms = 'arms: {x: {}, y: {lr: "2"}, z: {source: "{third}"}}\n'
    # z reroutes the second step's source: a cycle (third needs second), refused before running
    result = run(
        ["tools/run_recipe.py", str(_recipe(tmp_path, arms)), "--out", str(tmp_path / "o")]
    )
    assert result.returncode == 2 and "cycle" in result.stderr.strip().splitlines()[-1]
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, 'arms: {x: {}, y: {lr: "2"}}\n')
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    x, y = (json.loads((out / "arms" / f"{a}.json").read_text()) for a in "xy")
    assert x["first"] == y["first"] and x["second"] == y["second"] and x["third"] != y["third"]
    assert _runs(out) == ["first", "second", "third", "third"]
    assert _value(out, "x", "third") == "ab1" and _value(out, "y", "third") == "ab2"


def test_force_and_from_rerun_finished_steps(tmp_path):
    """--force STEP reruns STEP and every step that reads it (its folder emptied first);
    --from STEP reruns STEP and every later step; unknown names stop in one line."""
    recipe, out = _recipe(tmp_path), tmp_path / "out"
    base = ["tools/run_recipe.py", str(recipe), "--out", str(out)]
    ok(run(base))
    second = Path(json.loads((out / "arms" / "main.json").read_text())["second"])
    (second / "stale.txt").write_text("from an earlier run")
    ok(run([*base, "--force", "second"]))
    assert _runs(out) == ["first", "second", "third", "second", "third"]
    assert not (second / "stale.txt").exists() and _value(out, "main", "third") == "ab1"
    ok(run([*base, "--from", "third"]))
    assert _runs(out)[5:] == ["third"]
    refused = run([*base, "--force", "fourth"])
    assert refused.returncode == 2
    assert (
        refused.stderr.strip().splitlines()[-1] == "error: --force/--from fourth: not a step of toy"
    )


def test_one_runner_at_a_time_and_no_set_that_an_arm_drops(tmp_path):
    recipe, out = _recipe(tmp_path, 'arms: {x: {}, y: {lr: "2"}}\n'), tmp_path / "out"
    out.mkdir()
    with open(out / ".run_recipe.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another runner holds the folder
        busy = run(["tools/run_recipe.py", str(recipe), "--out", str(out)])
    last = busy.stderr.strip().splitlines()[-1]
    assert busy.returncode == 2 and "is in use by another run_recipe.py" in last, last
    assert not (out / "steps").exists()
    dropped = run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--set", "lr=5"])
    last = dropped.stderr.strip().splitlines()[-1]
    assert dropped.returncode == 2
    assert (
        last
        == "error: --set lr: arm y sets lr itself, which --set cannot replace; change it in recipe.yaml"
    )


@pytest.mark.parametrize(
    "steps, needle",
    [
        (
            "[{name: plan, run: 'tools/plan.py'},"
            " {name: t, run: 'pretrain_motif.py --exit-signal-handler', layout: plan,"
            " tasks_per_node: 2}]",
            "step t: layout 'plan' must be a dry_run step writing {out}/plan.json",
        ),
        (
            "[{name: plan, run: 'tools/plan.py', dry_run: true},"
            " {name: t, run: 'pretrain_motif.py --exit-signal-handler --micro-batch-size 2',"
            " layout: plan, tasks_per_node: 2}]",
            "step t: its layout comes from plan; drop --micro-batch-size",
        ),
        (
            "[{name: t, run: 'pretrain_motif.py --lr 1', tasks_per_node: 2}]",
            "step t: a training step with ranks needs --exit-signal-handler",
        ),
        (
            "[{name: a, run: 'tools/a.py'}, {name: plan, run: 'tools/plan.py {a}', dry_run: true}]",
            "step plan runs in --dry-run and before a --slurm submission, so it cannot read a",
        ),
    ],
    ids=["layout-not-dry-run", "layout-flag-named", "no-signal-handler", "dry-run-reads-late"],
)
def test_recipes_that_cannot_run_on_a_cluster_are_refused_in_one_line(tmp_path, steps, needle):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"name: bad\nsteps: {steps}\n")
    result = run(["tools/run_recipe.py", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"])
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: ") and needle in last, last


@pytest.mark.parametrize("settings", ["{nope: x}", "{seed: '3'}", "[base]"])
def test_seeds_settings_name_other_existing_settings(tmp_path, settings):
    """``seeds.settings`` overrides settings the recipe has, never the seed itself: anything
    else is one line."""
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: bad\nsettings: {seed: '0', base: --base b}\n"
        "steps: [{name: evaluate, run: 'tools/a.py {seed} {base}'}]\n"
        f"seeds: {{setting: seed, values: ['0', '1'], settings: {settings}}}\n"
        "report: {step: evaluate}\n"
    )
    result = run(["tools/run_recipe.py", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"])
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: seeds: needs setting"), last


def test_the_code_version_and_config_files_are_part_of_a_steps_identity(tmp_path, monkeypatch):
    """A step's hash changes with the project's git commit (or dirty state) and with the
    contents of a ``--config`` file its command names; step.json records the version."""
    from motif_megatron.recipe import runner
    from motif_megatron.recipe.spec import Recipe

    config = tmp_path / "train.yaml"
    config.write_text("lr: 1\n")
    recipe_file = _recipe(tmp_path)
    text = recipe_file.read_text().replace("--text {lr}", f"--text {{lr}} --config {config}")
    recipe_file.write_text(text)
    recipe, out = Recipe.load(recipe_file), tmp_path / "out"

    def digests() -> dict[str, str]:
        return {j.name: j.digest for j in runner.jobs(recipe, "main", out)}

    before = digests()
    config.write_text("lr: 2\n")
    assert digests()["third"] != before["third"] and digests()["second"] == before["second"]
    version = runner.code_version()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert version["commit"] == head.stdout.strip() and isinstance(version["dirty"], bool)
    changed = {**version, "dirty": not version["dirty"]}
    monkeypatch.setattr(runner, "code_version", lambda: changed)
    assert all(digests()[name] != before[name] for name in before)
    monkeypatch.undo()
    ok(run(["tools/run_recipe.py", str(recipe_file), "--out", str(out)]))
    folder = Path(json.loads((out / "arms" / "main.json").read_text())["first"])
    marker = json.loads((folder / "step.json").read_text())
    assert marker["code"] == version and marker["allocations"] == 1 and marker["seconds"] > 0


def test_slurm_scripts_run_in_dependency_order(tmp_path, slurm):
    recipe, out = (
        _recipe(tmp_path, 'arms: {x: {}, y: {lr: "2"}}\nslurm: {time: "0:05:00"}\n'),
        tmp_path / "out",
    )
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--slurm"]))
    submit = (out / "slurm" / "submit.sh").read_text().splitlines()
    sbatch = [line for line in submit if "sbatch" in line]
    assert len(sbatch) == 4  # first, second, third for x; only third for y
    assert "--dependency" not in sbatch[0] and "--dependency=afterok:$job_0 " in sbatch[1]
    assert (
        "--dependency=afterok:$job_1 " in sbatch[2] and "--dependency=afterok:$job_1 " in sbatch[3]
    )
    assert all("#SBATCH --time=0:05:00" in p.read_text() for p in (out / "slurm").glob("*.sbatch"))
    subprocess.run(["bash", str(out / "slurm" / "submit.sh")], cwd=ROOT, check=True, timeout=120)
    deadline = time.time() + 300
    while len(list((out / "steps").glob("*/step.json"))) < 4 and time.time() < deadline:
        time.sleep(1)
    subprocess.run(["scancel", "--name", "toy-first,toy-second,toy-third"], check=False)
    assert sorted(_runs(out)) == ["first", "second", "third", "third"]
    assert _runs(out)[:2] == ["first", "second"]
    again = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--dry-run"]))
    assert again.count(": done (") + again.count("shared with") == 6  # Slurm's markers count
    for marker in (out / "steps").glob("*/step.json"):  # written as a local run writes it
        record = json.loads(marker.read_text())
        assert record["allocations"] == 1 and record["seconds"] > 0 and record["nodes"], record


def test_a_second_slurm_run_leaves_queued_steps_alone(tmp_path, slurm):
    """Running --slurm again while the steps' jobs are queued (submitted held here) submits
    nothing new: each step keeps its job, and its dependents would wait for that one."""
    recipe, out = _recipe(tmp_path, "slurm: {hold: null}\n"), tmp_path / "out"
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--slurm"]))
    submit = out / "slurm" / "submit.sh"
    first = subprocess.run(["bash", str(submit)], capture_output=True, text=True, check=True)
    jobs = [line.split("\t")[1] for line in first.stdout.splitlines()]
    try:
        assert len(jobs) == 3
        ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--slurm"]))
        assert "sbatch" not in submit.read_text()
        again = subprocess.run(["bash", str(submit)], capture_output=True, text=True, check=True)
        assert [line.split("\t")[1] for line in again.stdout.splitlines()] == jobs
    finally:
        subprocess.run(["scancel", *jobs], check=False)


def _losses(folder: Path) -> list[float]:
    records = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if "loss" in r]


def test_a_step_with_ranks_runs_on_its_nodes_through_the_shared_launch(
    tmp_path, slurm, tiny_ckpt, ko_data
):
    """A step's resources become its sbatch options: a training step on two nodes x one rank
    runs its ranks with srun through examples/slurm/launch.sh (the launch pretrain.sbatch uses)
    and its marker names both nodes; a CPU step asks for one task with the recipe's CPU
    defaults. Locally the same step runs both ranks under one torchrun."""
    from conftest import SLURM_NODES, SMALL

    if SLURM_NODES < 2:
        pytest.skip(f"the local Slurm cluster has {SLURM_NODES} node (SLURM_NODES)")
    recipe = tmp_path / "ranked.yaml"
    train = f"pretrain_motif.py --load {tiny_ckpt} --save {{out}} --data-path {ko_data} "
    train += "--train-iters 3 --lr 1e-3 --tensor-model-parallel-size 2 --exit-signal-handler "
    train += "--metrics-file {out}/metrics.jsonl " + " ".join(SMALL)
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "ranked",
                "resources": {"cpu": {"cpus_per_task": 1, "mem": "1G"}, "ranked": {"time": 10}},
                "slurm": {"gpus-per-node": 0},
                "steps": [
                    {"name": "train", "run": train, "nodes": 2, "tasks_per_node": 1},
                    {"name": "note", "run": "touch {out}/seen {train}/metrics.jsonl"},
                ],
            }
        )
    )
    out = tmp_path / "out"
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--slurm", "--wait"]))
    scripts = {p.name.split("-")[0]: p.read_text() for p in (out / "slurm").glob("*.sbatch")}
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n" in scripts["train"]
    assert "#SBATCH --requeue" in scripts["train"] and "#SBATCH --time=10" in scripts["train"]
    assert "examples/slurm/launch.sh\nlaunch pretrain_motif.py " in scripts["train"]
    assert "#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n#SBATCH --mem=1G" in scripts["note"]
    folders = {p.name.split("-")[0]: p for p in (out / "steps").iterdir()}
    assert json.loads((out / "arms" / "main.json").read_text())["train"] == str(folders["train"])
    logs = "".join(p.read_text()[-3000:] for p in (out / "steps").glob("*/slurm-*.out"))
    marker = json.loads((folders["train"] / "step.json").read_text())
    assert marker["nodes"] == "motif-n[1-2]" and marker["allocations"] == 1, logs
    assert "2 ranks on 2 hosts" in logs
    slurm_losses = _losses(folders["train"])
    local = tmp_path / "local"
    printed = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(local)]))
    assert "--nproc_per_node=2 pretrain_motif.py" in printed
    train_local = next(p for p in (local / "steps").iterdir() if p.name.startswith("train-"))
    local_losses = _losses(train_local)
    assert train_local.name == folders["train"].name  # the same step, whatever runs it
    assert max(abs(a - b) for a, b in zip(slurm_losses, local_losses, strict=True)) < 1e-6


def test_the_motif_recipe_dry_runs_with_shared_data_steps(tmp_path):
    """examples/recipes/motif-102b.yaml at its published sizes: every arm's commands, the data
    and import steps shared by all arms, the depth-only arm's growth flags its own."""
    recipe = ROOT / "examples/recipes/motif-102b.yaml"
    printed = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(tmp_path), "--dry-run"]))
    shared = [line for line in printed.splitlines() if "shared with an earlier arm" in line]
    assert {line.split()[1].rstrip(":") for line in shared if line.startswith("[depth_only]")} >= {
        "import",
        "corpus_ko",
        "corpus_en",
        "shards_ko",
        "shards_en",
        "blend",
    }
    grow = next(line for line in printed.splitlines() if line.startswith("[motif] grow:"))
    assert "--hidden-size 9216 --ffn-hidden-size 30720 --num-attention-heads 72" in grow
    depth = next(line for line in printed.splitlines() if line.startswith("[depth_only] grow:"))
    assert "--hidden-size" not in depth and "--depth-add 16" in depth
    assert "[depth_only] finalize" not in printed  # no MSG masks: SFT starts from the trained model
    blend = next(line for line in printed.splitlines() if line.startswith("[ratio_8_2] blend:"))
    assert "--group ko 8 " in blend and "--data-args-path" in blend
    assert "[motif] plan: preview failed, going on: " in printed  # no base model here
    train = next(line for line in printed.splitlines() if line.startswith("[motif] train:"))
    assert "its layout comes from" in train and "not written yet" in train


def test_the_motif_recipe_plans_in_its_dry_run(tmp_path):
    """The plan step runs in --dry-run: tools/plan.py on the base's config.json with the
    arm's growth, written in the step's folder before anything is launched."""
    from test_plan import LLAMA3_70B

    (tmp_path / "llama70b").mkdir()
    (tmp_path / "llama70b" / "config.json").write_text(json.dumps(LLAMA3_70B))
    recipe, out = ROOT / "examples/recipes/motif-102b.yaml", tmp_path / "out"
    flags = ["--out", str(out), "--dry-run", "--set", f"base={tmp_path / 'llama70b'}"]
    printed = ok(run(["tools/run_recipe.py", str(recipe), *flags]))
    assert "recommended: TP=" in printed and "preview failed" not in printed
    plans = {}
    for path in (out / "steps").glob("plan-*/plan.json"):
        plan = json.loads(path.read_text())
        plans[plan["params_grown"]] = plan
    assert 102_022_456_320 in plans and len(plans) == 2  # motif, and the depth-only arm
    motif = plans[102_022_456_320]
    assert motif["recommended"]["fits"] and motif["recommended"]["cp"] == 1
    # the run's length is stated once: the plan's days are for the tokens the trainer runs
    assert motif["train_tokens"] == 46250 * 512 * 8192
    assert f"{motif['train_days']:.1f} days" in printed
    assert not list((out / "steps").glob("import-*/step.json"))  # nothing else ran
    # every GPU step takes the plan's nodes and layout; the trainer reads the blend step's file
    launch = motif["launch"]
    nodes = f"{launch['nodes']} nodes x {launch['ranks_per_node']} GPUs: "
    for step in ("train", "sft", "kto"):
        line = next(x for x in printed.splitlines() if x.startswith(f"[motif] {step}:"))
        assert nodes in line and line.endswith(launch["flags"]), line
        assert f"--nproc_per_node={launch['nodes'] * launch['ranks_per_node']} " in line
    train = next(x for x in printed.splitlines() if x.startswith("[motif] train:"))
    assert "--data-args-path" in train and "/data_args.txt" in train
    assert "--tensor-model-parallel-size 8" in launch["flags"]
    evaluate = next(x for x in printed.splitlines() if x.startswith("[motif] evaluate:"))
    assert "2 nodes x 8 GPUs: " in evaluate


EVALUATE = """
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--ko", type=float); p.add_argument("--en", type=float)
a = p.parse_args()
row = {"ko": {"ppl": a.ko}, "en": {"ppl": a.en}, "token_ratio": {"ko": 0.6}}
(pathlib.Path(a.out) / "evaluation.json").write_text(json.dumps({"checkpoints": {"final": row}}))
"""


def test_ablation_report_marks_the_arms_that_dominate_the_baseline(tmp_path):
    (tmp_path / "evaluate.py").write_text(EVALUATE)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""name: ablation
settings: {{script: {tmp_path / "evaluate.py"}, ko: "100", en: "50"}}
steps:
  - {{name: evaluate, run: "{{script}} --out {{out}} --ko {{ko}} --en {{en}}"}}
arms:
  baseline: {{}}
  better: {{ko: "40", en: "45"}}
  tradeoff: {{ko: "30", en: "80"}}
  worse: {{ko: "120", en: "60"}}
report: {{step: evaluate, checkpoint: final, korean: ko, english: en, baseline: baseline}}
"""
    )
    out = tmp_path / "out"
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    arms = {r["name"]: r for r in json.loads((out / "ablation.json").read_text())["arms"]}
    assert [arms[a]["dominates_baseline"] for a in ("baseline", "better", "tradeoff", "worse")] == [
        False,
        True,
        False,
        False,
    ]
    assert {a for a, r in arms.items() if r["non_dominated"]} == {"better", "tradeoff"}
    assert arms["better"]["korean_ppl"] == 40 and arms["better"]["token_ratio"] == 0.6
    table = (out / "ablation.md").read_text()
    assert "| better | 40.00 | 45.00 | 0.600 |" in table
    assert (out / "ablation.png").stat().st_size > 0


SEEDED = """
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--ko", type=float); p.add_argument("--seed", type=float)
p.add_argument("--base")
a = p.parse_args()
rows = {"final": {}, "base": {}}
for name, scale in (("ko", 1.0), ("ko_faq", 2.0), ("en", 3.0), ("en_faq", 4.0)):
    rows["final"][name] = {"ppl": scale * a.ko + a.seed, "bits_per_char": scale}
    rows["base"][name] = {"ppl": 1000.0, "bits_per_char": 9.0}
rows["final"]["load"] = a.out + "/ckpt"
out = {"reference_tokenizer": "tok", "checkpoints": rows}
(pathlib.Path(a.out) / "evaluation.json").write_text(json.dumps(out))
"""


def test_seeds_repeat_arms_and_the_report_gives_mean_and_spread_per_domain(tmp_path):
    """``seeds`` reruns the named arms (with the seeds' own settings); report.json's
    ``domains`` has each arm's mean, sample sd and seeds per domain, ``goal`` per test domain,
    each arm its checkpoint."""
    (tmp_path / "evaluate.py").write_text(SEEDED)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""name: seeds
settings: {{script: {tmp_path / "evaluate.py"}, ko: "100", seed: "0", base: --base b}}
steps:
  - {{name: evaluate, run: "{{script}} --out {{out}} --ko {{ko}} --seed {{seed}} {{base}}"}}
arms:
  baseline: {{}}
  recipe: {{ko: "60"}}
  other: {{ko: "10"}}
seeds: {{setting: seed, values: ["0", "3", "6"], arms: [baseline, recipe], settings: {{base: ""}}}}
report:
  step: evaluate
  baseline: baseline
  recipe: recipe
  domains: {{ko: ko, ko_faq: ko, en: en, en_faq: en}}
"""
    )
    out = tmp_path / "out"
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    steps = list((out / "steps").iterdir())
    assert len(steps) == 3 + 2 * 2  # every arm once, two repeats each
    # the repeats without the headline runs' --base (seeds.settings)
    argvs = [json.loads((s / "job.json").read_text())["argv"] for s in steps]
    assert sorted("--base" in a for a in argvs) == [False] * 4 + [True] * 3
    report = json.loads((out / "report.json").read_text())
    assert report["reference_tokenizer"] == str(ROOT / "tok")  # made absolute: usable anywhere
    ko = report["domains"]["ko"]
    assert ko["split"] == "test" and ko["language"] == "ko"
    assert ko["arms"]["recipe"] == {
        "ppl_mean": 63.0,
        "ppl_sd": 3.0,
        "bits_per_char_mean": 1.0,
        "seeds": ["0", "3", "6"],
    }
    assert ko["arms"]["other"]["seeds"] == ["0"] and ko["arms"]["other"]["ppl_sd"] is None
    assert report["domains"]["en_faq"]["arms"]["baseline"]["ppl_mean"] == 403.0
    # Korean training domain 63/103 > 0.5: not met; elsewhere at most 1x: met, beyond the spread
    assert [report["goal"][d]["met"] for d in ("ko", "ko_faq", "en", "en_faq")] == [
        False,
        True,
        True,
        True,
    ]
    assert report["goal"]["ko"]["beyond_spread"] and report["goal_met"] is False
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["recipe"]["checkpoint"].endswith("/ckpt") and arms["recipe"]["korean_ppl"] == 63.0
    assert (
        "| recipe | 63.0 +- 3 (n=3, 1.00 bpc) | 123.0 +- 3 (n=3, 2.00 bpc) |"
        in (out / "ablation.md").read_text()
    )


@pytest.mark.parametrize("name", ["eeve", "redwhale"])
def test_the_eeve_and_redwhale_recipes_dry_run(tmp_path, name):
    """Their tokenizer steps are shared by every arm; the arms differ from the growth on."""
    recipe = ROOT / f"examples/recipes/{name}.yaml"
    printed = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(tmp_path), "--dry-run"]))
    lines = printed.splitlines()
    shared = {line.split()[1].rstrip(":") for line in lines if "shared with an earlier arm" in line}
    assert {"corpus_ko", "tokenizer_ko", "tokenizer", "import"} <= shared and "grow" not in shared
    grows = [line for line in lines if " grow: " in line and "--init" in line]
    assert len({line.split("--init ")[1].split()[0] for line in grows}) == len(grows) > 1


TRAIN = """
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--lr", type=float); p.add_argument("--best", type=float)
a = p.parse_args()
out = pathlib.Path(a.out)
records = [{"iteration": 4, "loss": 9.0, "tokens": 4096}, {"iteration": 4, "eval_loss": 0.0}]
records.append({"iteration": 4, "eval_loss": abs(a.lr - a.best)})  # the last one counts
(out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in records))
(out / "lr.txt").write_text(str(a.lr))
with open(out.parent.parent / "runs.log", "a") as log:
    log.write(out.name.split("-")[0] + "\\n")
"""

SCORE = """
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--train"); p.add_argument("--en", type=float)
a = p.parse_args()
lr = float((pathlib.Path(a.train) / "lr.txt").read_text())
final = {"ko": {"ppl": 10 * lr}, "en": {"ppl": a.en}, "token_ratio": {"ko": 0.7}}
base = {"ko": {"ppl": 1000.0}, "en": {"ppl": 40.0}}
evaluation = {"checkpoints": {"final": final, "base": base}}
(pathlib.Path(a.out) / "evaluation.json").write_text(json.dumps(evaluation))
with open(pathlib.Path(a.out).parent.parent / "runs.log", "a") as log:
    log.write("evaluate\\n")
"""


def test_a_sweep_keeps_each_arms_best_value_and_reuses_its_run(tmp_path):
    """Every arm runs its select step once per value; the arm then continues from the value
    with the lowest last eval_loss (its candidate's steps reused), and report.json sets the
    recipe arm against the base and the baseline."""
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "score.py").write_text(SCORE)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""name: sweep
settings: {{train: {tmp_path / "train.py"}, score: {tmp_path / "score.py"}, lr: "1", best: "2",
            en: "50"}}
steps:
  - {{name: cpt, run: "{{train}} --out {{out}} --lr {{lr}} --best {{best}}"}}
  - {{name: evaluate, run: "{{score}} --out {{out}} --train {{cpt}} --en {{en}}"}}
  - {{name: extra, run: "{{train}} --out {{out}} --lr 9 --best 9"}}
arms:
  baseline: {{}}
  recipe: {{best: "3", en: "45", targets: [extra]}}
sweep: {{setting: lr, values: ["1", "2", "3"], select: cpt}}
report: {{step: evaluate, baseline: baseline, recipe: recipe, base: base, train: cpt}}
"""
    )
    out = tmp_path / "out"
    dry = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out), "--dry-run"]))
    assert dry.count(" cpt: ") == 6 and "[recipe] then the steps after cpt" in dry
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    sweep = json.loads((out / "sweep.json").read_text())["arms"]
    assert sweep["baseline"] == {"setting": "lr", "scores": {"1": 1, "2": 0, "3": 1}, "kept": "2"}
    assert sweep["recipe"]["kept"] == "3"
    assert sorted(_runs(out)) == ["cpt"] * 6 + ["evaluate", "evaluate", "extra"]
    assert _value(out, "baseline", "cpt", "lr.txt") == "2.0"
    report = json.loads((out / "report.json").read_text())
    assert (report["korean_ppl_base"], report["english_ppl_base"]) == (1000.0, 40.0)
    assert (report["korean_ppl_baseline"], report["korean_ppl_final"]) == (20.0, 30.0)
    assert report["english_ppl_final"] == 45.0 and report["goal_met"] is False
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["recipe"]["tokens"] == 4096 and arms["recipe"]["token_ratio"] == 0.7
    assert [arms[a]["dominates_baseline"] for a in ("baseline", "recipe")] == [False, False]
    assert "2: 0.000 (kept)" in (out / "ablation.md").read_text()
    again = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)]))
    assert len(_runs(out)) == 9 and ": run" not in again  # everything is reused


def test_a_sweep_whose_select_step_writes_no_metrics_stops_in_one_line(tmp_path):
    (tmp_path / "quiet.py").write_text("")  # succeeds and writes no metrics.jsonl
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""name: quiet
settings: {{quiet: {tmp_path / "quiet.py"}, lr: "1"}}
steps:
  - {{name: cpt, run: "{{quiet}} --lr {{lr}}"}}
sweep: {{setting: lr, values: ["1", "2"], select: cpt}}
"""
    )
    result = run(["tools/run_recipe.py", str(recipe), "--out", str(tmp_path / "out")])
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep: ") and "metrics.jsonl not found" in last


def test_the_demo_recipe_writes_its_arm_table(tmp_path):
    """examples/recipes/demo.yaml, shortened (3 training iterations a run, one learning rate, the
    recipe arm without post-training): every arm trained on the same tokens and evaluated, and
    report.json with the keys outside checks read."""
    spec = yaml.safe_load((ROOT / "examples/recipes/demo.yaml").read_text())
    base = yaml.safe_load((ROOT / spec["settings"]["base_config"]).read_text())
    msg = yaml.safe_load((ROOT / spec["settings"]["msg_config"]).read_text())
    base.update({"train-iters": 3, "save-interval": 3})
    msg.update({"msg-ramp-start": 1, "msg-ramp-iters": 1, "train-iters": 3, "save-interval": 3})
    msg["stages"][0]["iters"] = 1
    for name, config in (("base.yaml", base), ("msg.yaml", msg)):
        (tmp_path / name).write_text(yaml.safe_dump(config))
    spec["settings"].update(
        iters="3",
        base_config=str(tmp_path / "base.yaml"),
        msg_config=str(tmp_path / "msg.yaml"),
    )
    spec["sweep"]["values"] = ["3.0e-3"]
    spec["seeds"]["values"] = ["1234", "1"]
    spec["targets"] = ["evaluate"]  # the dev evaluation in the recipe arm alone: suite time
    spec["arms"]["llamapro"]["targets"] = ["ratio_expanded", "ratio_alone", "evaluate_dev"]
    recipe, out = tmp_path / "demo.yaml", tmp_path / "out"
    recipe.write_text(yaml.safe_dump(spec, sort_keys=False))
    ok(run(["tools/run_recipe.py", str(recipe), "--out", str(out)], timeout=1800))
    report = json.loads((out / "report.json").read_text())
    arms = {a["name"]: a for a in report["arms"]}
    assert list(arms) == [
        "baseline",
        "llamapro",
        "llamapro_msg",
        "lora",
        "baseline_vocab",
        "llamapro_novocab",
    ]
    for arm in arms.values():
        assert {"name", "korean_ppl", "english_ppl", "token_ratio", "tokens"} <= set(arm)
        assert arm["tokens"] == 3 * 8 * 128 and arm["sweep"]["kept"] == "3.0e-3"
        assert arm["dominates_baseline"] == (
            arm["korean_ppl"] <= arms["baseline"]["korean_ppl"]
            and arm["english_ppl"] <= arms["baseline"]["english_ppl"]
            and arm["name"] != "baseline"
        )
        assert (Path(arm["checkpoint"]) / "latest_checkpointed_iteration.txt").is_file()
    for name in ("baseline", "llamapro_novocab"):  # the base tokenizer
        assert arms[name]["token_ratio"] == 1.0
    for name in ("llamapro", "baseline_vocab"):  # the expanded one
        assert 0 < arms[name]["token_ratio"] < 1
    assert report["recipe"] == "llamapro"
    assert Path(report["reference_tokenizer"], "tokenizer.json").is_file()
    assert report["korean_ppl_final"] == arms["llamapro"]["korean_ppl"]
    assert report["english_ppl_baseline"] == arms["baseline"]["english_ppl"]
    assert report["korean_ppl_baseline"] < report["korean_ppl_base"]  # Korean training helps
    # four domains, the test split, two seeds for the baseline and the recipe
    domains = report["domains"]
    assert {n: (d["split"], d["language"]) for n, d in domains.items()} == {
        "ko": ("test", "ko"),
        "ko_faq": ("test", "ko"),
        "en": ("test", "en"),
        "en_faq": ("test", "en"),
    }
    for domain in domains.values():
        assert set(domain["arms"]) == set(arms)
        for arm, stats in domain["arms"].items():
            seeds = ["1234", "1"] if arm in ("baseline", "llamapro") else ["1234"]
            assert stats["seeds"] == seeds and (stats["ppl_sd"] is None) == (len(seeds) == 1)
            assert stats["ppl_mean"] > 1 and stats["bits_per_char_mean"] > 0
    assert domains["ko"]["arms"]["llamapro"]["ppl_mean"] == arms["llamapro"]["korean_ppl"]
    assert report["dev_domains"]["ko_faq"]["split"] == "dev"
    assert report["goal"]["ko"]["required"] == 0.5 and report["goal"]["en_faq"]["required"] == 1
    assert report["goal_met"] == all(g["met"] for g in report["goal"].values())
    ratios = report["tokenizers"]
    assert ratios["ratio_expanded"]["en"] == 1.0 and 0 < ratios["ratio_expanded"]["ko"] < 1
    assert ratios["ratio_alone"]["ko"] > 0
    assert "| llamapro_msg |" in (out / "ablation.md").read_text()
