"""The run config: defaults <- YAML <- --set, typed, with dotted-key errors."""

import pytest

from bort import config as C
from bort.errors import ConfigError


def test_defaults_are_the_embedded_default():
    cfg = C.resolve()
    assert cfg.source.model == "minilm"
    assert cfg.task.name == "rotten_tomatoes"


def test_yaml_then_set_override_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\noptimize:\n  seq_len: 64\n  epsilon: 0.2\n")
    cfg = C.resolve([f], ["optimize.seq_len=32", "serve.port=4000"])
    assert (cfg.seed, cfg.optimize.seq_len, cfg.optimize.epsilon, cfg.serve.port) == (3, 32, 0.2, 4000)


def test_unknown_nested_key_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"'optimize\.seq_lenn'"):
        C.resolve(overrides=["optimize.seq_lenn=3"])


def test_wrong_type_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"optimize\.seq_len: expected an integer"):
        C.resolve(overrides=["optimize.seq_len=fast"])


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; bort takes it as the number a user means."""
    f = tmp_path / "c.yaml"
    f.write_text("finetune:\n  lr: 2e-5\n")
    cfg = C.resolve([f], ["finetune.labeller_lr=1e-4"])
    assert (cfg.finetune.lr, cfg.finetune.labeller_lr) == (2e-5, 1e-4)
    for bad in ("fast", "nan", "inf"):
        with pytest.raises(ConfigError, match=r"finetune\.lr: expected a number"):
            C.resolve(overrides=[f"finetune.lr={bad}"])


def test_bool_is_not_accepted_as_a_number():
    with pytest.raises(ConfigError, match="serve.port"):
        C.resolve(overrides=["serve.port=true"])


def test_tuple_fields_take_lists_and_check_items():
    cfg = C.resolve(overrides=["loadtest.users=[1, 2, 4]"])
    assert cfg.loadtest.users == (1, 2, 4)
    with pytest.raises(ConfigError, match=r"loadtest\.users\[1\]"):
        C.resolve(overrides=["loadtest.users=[1, x]"])


def test_validation_in_post_init_names_the_key():
    with pytest.raises(ConfigError, match="optimize.precision"):
        C.resolve(overrides=["optimize.precision=fp16"])


@pytest.mark.parametrize(("override", "key"), [("finetune.selection_holdout=1.0", "finetune.selection_holdout"),
                                                ("serve.inline_max_texts=-1", "serve.inline_max_texts")])
def test_new_range_checks_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        C.resolve([], [override])


def test_missing_config_file_lists_the_named_profiles():
    with pytest.raises(ConfigError, match="not found.*default"):
        C.resolve(["no-such-profile"])


def test_named_profiles_resolve():
    for name in ("default", "quick", "tiny"):
        assert isinstance(C.resolve([name]), C.RunConfig)


def test_round_trip_through_dict_and_fingerprint():
    cfg = C.resolve(overrides=["optimize.weights=[1, 2, 3]", "seed=7"])
    again = C.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.section_fingerprint("optimize") == cfg.section_fingerprint("optimize")
    other = C.resolve(overrides=["optimize.weights=[1, 2, 4]", "seed=7"])
    assert other.section_fingerprint("optimize") != cfg.section_fingerprint("optimize")
    assert other.section_fingerprint("serve") == cfg.section_fingerprint("serve")


def test_where_work_runs_is_not_part_of_a_fingerprint():
    base = C.resolve(["tiny"])
    moved = C.resolve(["tiny"], ["optimize.executor=process", "optimize.workers=2", "finetune.ray_address=auto"])
    for section in ("optimize", "finetune"):
        assert moved.section_fingerprint(section) == base.section_fingerprint(section)
    assert C.resolve(["tiny"], ["optimize.seq_len=64"]).section_fingerprint("optimize") != \
        base.section_fingerprint("optimize")
