"""The model's shape, from a config (oomladder plan) and from the live modules (the worker)."""

import json

import pytest

from oomladder.errors import UsageError
from oomladder.memory.shape import from_config, read_config

TINY = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}


def _real_model(config):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**config))


def test_the_config_arithmetic_counts_what_transformers_builds():
    model = _real_model(TINY)
    assert from_config(TINY).params == sum(p.numel() for p in model.parameters())


def test_a_tied_lm_head_is_not_counted_twice():
    tied = {**TINY, "tie_word_embeddings": True}
    model = _real_model(tied)
    shape = from_config(tied)
    assert shape.head_params == 0 and shape.params == sum(p.numel() for p in model.parameters())


def test_the_worker_counts_the_same_shape_from_a_peft_model_and_its_adapters():
    from peft import LoraConfig, get_peft_model

    from oomladder.worker.protocol.probe import model_report
    model = get_peft_model(_real_model(TINY), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                         task_type="CAUSAL_LM"))
    report = model_report(model)
    expected = from_config(TINY)
    assert report["shape"]["linear_params"] == expected.linear_params
    assert report["shape"]["embedding_params"] == expected.embedding_params
    assert report["shape"]["head_params"] == expected.head_params
    assert report["adapters"] is True and report["lora_targets"] == ["q_proj", "v_proj"]
    assert report["trainable_params"] == expected.lora_params(4, ("q_proj", "v_proj"))


def test_a_model_folder_or_its_config_file_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert read_config(tmp_path) == read_config(tmp_path / "config.json") == TINY


@pytest.mark.parametrize("content, message", [
    (None, "neither a model folder with a config.json nor a config file"),
    ("{not json", "is not a readable JSON model config"),
    ("[1, 2]", "is not a model config"),
])
def test_a_missing_or_broken_config_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_config(path if content is not None else tmp_path / "nowhere")


def test_a_config_without_a_decoders_dimensions_says_which_are_read():
    with pytest.raises(UsageError, match="hidden_size, intermediate_size"):
        from_config({"d_model": 512})


def test_a_model_without_a_vocabulary_head_reports_no_shape_and_gets_no_estimate():
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from oomladder.worker.protocol.probe import model_report
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(LlamaConfig(**TINY, num_labels=3))
    assert model_report(classifier) is None
