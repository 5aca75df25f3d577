"""The farm job file: schema errors name the key and the line; matrix expansion is deterministic."""
import json

import pytest

from vmsandbox.exceptions import ConfigError
from vmsandbox.farm.spec import JobSpec, load_farm, loads_farm

GOOD = """\
name: nightly
base:
  box: tiny
  setup: "mkdir -p /work && echo ready > /work/base"
  upload: {"./src": "/work/src"}
defaults: {timeout: 600, cpu: "1", memory: 256M, network: none}
jobs:
  - name: unit
    run: "cd /work/src && sh run-tests.sh unit"
    artifacts: ["/work/src/out/"]
  - name: lint
    run: "cd /work/src && sh run-tests.sh lint"
    retry_on_failure: 2
matrix:
  - name: "shard-{SHARD}"
    run: "cd /work/src && sh run-tests.sh shard $SHARD"
    vars: {SHARD: [1, 2, 3, 4]}
"""


@pytest.fixture
def farm_dir(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "run-tests.sh").write_text("echo hi\n")
    return tmp_path


def parse(farm_dir, text):
    p = farm_dir / "farm.yaml"
    p.write_text(text)
    return load_farm(p)


def test_the_issue_example_parses(farm_dir):
    spec = parse(farm_dir, GOOD)
    assert spec.name == "nightly"
    assert [j.name for j in spec.jobs] == ["unit", "lint", "shard-1", "shard-2", "shard-3", "shard-4"]
    assert spec.base.upload == ((str(farm_dir / "src"), "/work/src"),)
    assert spec.base.memory == "256M" and spec.base.network == "none"
    unit = spec.job("unit")
    assert unit.artifacts == ("/work/src/out/",) and unit.timeout == 600.0 and unit.retries == 2
    assert spec.job("lint").retry_on_failure == 2
    assert spec.job("shard-3").env == {"SHARD": "3"}
    assert spec.job("shard-3").line == 15


def test_a_typo_in_a_key_names_the_key_and_the_line(farm_dir):
    with pytest.raises(ConfigError) as e:
        parse(farm_dir, GOOD.replace("    artifacts:", "    artifact:"))
    msg = str(e.value)
    assert "jobs[0].artifact" in msg and "unknown key 'artifact'" in msg and "line 10" in msg


def test_a_typo_at_the_top_and_in_defaults(farm_dir):
    with pytest.raises(ConfigError, match=r"^jobz: unknown key .*line 7"):
        parse(farm_dir, GOOD.replace("jobs:", "jobz:"))
    with pytest.raises(ConfigError, match=r"defaults.timout: unknown key .*line 6"):
        parse(farm_dir, GOOD.replace("timeout: 600", "timout: 600"))


def test_job_names_are_unique_across_jobs_and_matrix(farm_dir):
    text = GOOD.replace('name: "shard-{SHARD}"', 'name: "unit"')
    with pytest.raises(ConfigError, match=r"matrix\[0\].name: job name 'unit' is used twice .*line 15"):
        parse(farm_dir, text)


def test_matrix_expansion_is_deterministic_product_in_file_order(farm_dir):
    text = GOOD.replace('name: "shard-{SHARD}"', 'name: "t-{OS}-{SHARD}"').replace(
        "vars: {SHARD: [1, 2, 3, 4]}", "vars: {OS: [b, a], SHARD: [2, 1]}")
    names = [j.name for j in parse(farm_dir, text).jobs[2:]]
    assert names == ["t-b-2", "t-b-1", "t-a-2", "t-a-1"]
    assert names == [j.name for j in parse(farm_dir, text).jobs[2:]]


def test_matrix_name_with_unknown_variable(farm_dir):
    with pytest.raises(ConfigError, match=r"matrix\[0\].name: .*unknown variable"):
        parse(farm_dir, GOOD.replace('"shard-{SHARD}"', '"shard-{SHRAD}"'))


def test_machine_keys_belong_to_defaults_not_to_a_job(farm_dir):
    with pytest.raises(ConfigError, match=r"jobs\[1\].memory: unknown key 'memory'; clones share the base"):
        parse(farm_dir, GOOD.replace("    retry_on_failure: 2", "    memory: 1G"))


@pytest.mark.parametrize("old,new,expected", [
    ("timeout: 600", "timeout: -1", r"defaults.timeout: -1 must be a number above 0"),
    ("network: none", "network: bridge", r"defaults.network: 'bridge' is not one of none, nat"),
    ('["/work/src/out/"]', '["relative/out"]', r"jobs\[0\].artifacts\[0\]: 'relative/out' is not an absolute"),
    ("retry_on_failure: 2", "retry_on_failure: yes", r"jobs\[1\].retry_on_failure: True must be a whole number"),
    ("name: nightly", "name: Night Ly", r"name: 'Night Ly' must be"),
    ('"./src": "/work/src"', '"./nope": "/work/src"', r"base.upload../nope: local path .* does not exist"),
    ("  box: tiny\n", "", r"base.box: missing .*line 2"),
    ("name: unit", "name: ../unit", r"jobs\[0\].name: '../unit' is not a valid job name"),
])
def test_bad_values_are_named(farm_dir, old, new, expected):
    with pytest.raises(ConfigError, match=expected):
        parse(farm_dir, GOOD.replace(old, new))


def test_duplicate_yaml_keys_and_bad_yaml(farm_dir):
    with pytest.raises(ConfigError, match=r"jobs\[0\].run: duplicate key 'run' .*line 10"):
        parse(farm_dir, GOOD.replace("    artifacts:", "    run: again\n    artifacts:"))
    with pytest.raises(ConfigError, match=r"line 3 is not valid YAML"):
        loads_farm("name: x\nbase: {box: tiny\njobs: []\n", source="farm.yaml")
    with pytest.raises(ConfigError, match="farm.yaml is empty"):
        loads_farm("", source="farm.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_farm(farm_dir / "missing.yaml")


def test_no_jobs_is_an_error():
    with pytest.raises(ConfigError, match="no jobs"):
        loads_farm("name: x\nbase: {box: tiny}\n")


def test_job_spec_round_trips_through_json(farm_dir):
    for job in parse(farm_dir, GOOD).jobs:
        assert JobSpec.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_cli_names_the_bad_key_in_one_line_and_exits_2(farm_dir):
    from click.testing import CliRunner

    from vmsandbox.cli import cli
    (farm_dir / "farm.yaml").write_text(GOOD.replace("    run: \"cd /work/src && sh run-tests.sh lint\"",
                                                     "    rnu: x"))
    r = CliRunner().invoke(cli, ["--state-dir", str(farm_dir / "state"), "farm", "run", str(farm_dir / "farm.yaml")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: jobs[1].rnu: unknown key 'rnu' (known: name, run, env, timeout, artifacts, artifacts_max, retries, "
        "retry_on_failure, keep_failed, keep_failed_ttl, workdir, tags) (farm.yaml line 12)"]


def test_progress_rows_never_pass_guest_escapes_to_the_terminal():
    from rich.console import Console

    from vmsandbox.cli.farm_cmds import _Progress
    p = _Progress(live=False)
    p.event("b", "running", {})
    p.event("b", "failed", {"duration": 2.0, "reason": "exit \x1b]0;owned\x07 3"})
    c = Console(width=120, record=True, force_terminal=False)
    c.print(p.render())
    text = c.export_text()
    assert "\x1b" not in text and "\\x1b]0;owned\\x07" in text and "failed" in text
