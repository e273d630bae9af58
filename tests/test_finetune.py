"""Stage (b): fine-tuning the last backbone block end to end, checkpointing and resuming it."""

import json

import pytest
import torch

from cxrdx.config import load_config
from cxrdx.models.run import load_run, save_run
from cxrdx.training.finetune import finetune
from cxrdx.training.pipeline import build_model


@pytest.mark.slow
def test_finetune_changes_only_the_unfrozen_blocks_and_resumes(cxr3_slice, tmp_path):
    small = cxr3_slice.groupby("label", group_keys=False).head(6).reset_index(drop=True)
    train, val = small.iloc[::2].reset_index(drop=True), small.iloc[1::2].reset_index(drop=True)
    cfg = load_config(overrides=[
        "model.head=gru", "train.finetune_blocks=1", "train.finetune_epochs=1", "train.finetune_batch_size=3",
        "train.patience=5",
    ])
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    result = finetune(model, train, val, cfg, tmp_path, progress=False)
    assert len(result.history) == 1
    after = model.backbone.state_dict()
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "") for k in before
               if not torch.equal(before[k], after[k]) and "num_batches" not in k}
    assert changed and changed <= {"blocks.6", "conv_head", "bn2"}
    assert torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])

    save_run(model, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["backbone_in_checkpoint"] is True
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(load_run(tmp_path / "run").predict_proba(x), model.predict_proba(x))

    # resume: a second call with more epochs continues at epoch 2 instead of starting over
    cfg.train.finetune_epochs = 2
    resumed = finetune(build_model(cfg), train, val, cfg, tmp_path, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
