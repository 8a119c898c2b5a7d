from pathlib import Path

import pytest

KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2024"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kang_dir() -> Path:
    if not (KANG / "kang_gsm8k_records.parquet").is_file():
        pytest.skip(f"the paper's released records are not at {KANG} (../shared/data/kang2024 beside the repo)")
    return KANG


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama model with a tokenizer trained on the synthetic task, saved as an HF directory."""
    from workers.models import build_tiny_model, build_tokenizer, save_pretrained_atomic
    from workers.tasks import PromptFormat
    from workers.tasks.synthetic import make_examples

    fmt = PromptFormat()
    corpus = [fmt.prompt(e.question) + fmt.target(e.solution) for e in make_examples(0, 300, "tok")]
    tokenizer = build_tokenizer(corpus, 400)
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, max_positions=256, seed=0)
    return save_pretrained_atomic(model, tokenizer, tmp_path_factory.mktemp("model") / "tiny")
