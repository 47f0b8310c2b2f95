from __future__ import annotations

import pytest

from runner.secret_guard import forwarded, looks_like_secret_name, looks_like_secret_value, redact


@pytest.mark.parametrize("value", [
    "AKIAIOSFODNN7EXAMPLE", "sk-proj-abcdefghijklmnop1234567890", "hf_abcdefghijklmnopqrstuvwxyz123456",
    "rpa_ABCDEFGHIJKLMNOPQRSTUVWX0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "-----BEGIN RSA PRIVATE KEY-----", "prefix sk-ant-api03-abcdefghijklmnopqrstu suffix",
])
def test_credentials_are_recognised(value):
    assert looks_like_secret_value(value)


@pytest.mark.parametrize("value", [
    "gpt2", "data/train.jsonl", "s3://bucket/prefix", "607a30d783dfa663caf39e06633721c8d4cfcd7e", "sk-short",
    "NVIDIA GeForce RTX 3090", "us-east-1",
])
def test_ordinary_values_are_not(value):
    assert looks_like_secret_value(value) is None


def test_prefixless_aws_secret_keys_only_where_credentials_are_plausible():
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert looks_like_secret_value(secret, strict=True) == "an AWS secret access key"
    assert looks_like_secret_value(secret) is None


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("WANDB_API_KEY", True), ("DB_PASSWORD", True),
    ("AWS_ACCESS_KEY_ID", True), ("TOKENIZERS_PARALLELISM", False), ("AWS_REGION", False), ("KEY_FRAMES", False),
])
def test_credential_names(name, secret):
    assert looks_like_secret_name(name) is secret


def test_forwarded_and_redact():
    values, missing = forwarded(["A_TOKEN", "B_TOKEN"], {"A_TOKEN": "alpha-value", "B_TOKEN": ""})
    assert values == {"A_TOKEN": "alpha-value"} and missing == ["B_TOKEN"]
    text = "failed with alpha-value and hf_abcdefghijklmnopqrstuvwxyz123456"
    assert redact(text, ["alpha-value"]) == "failed with *** and ***"
