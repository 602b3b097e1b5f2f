"""Both students of ``sampled_run.sh`` against the live teacher on the same validation rows: top-1 agreement
and KL(teacher || student), which a run from a cache cannot measure fairly (its agreement is against the
cache's first slot: only the most-drawn token for a sampled cache). Writes ``OUT/agreement.json`` and a copy
here (``sampled_agreement.json``).

    python experiments/teachers/sampled_agreement.py [OUT]
"""

import json
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from transformers import AutoModelForCausalLM

from distill.cli.resolvers import register
from distill.eval.metrics import evaluate
from distill.run.data import prepare_data

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache/distill"))
TEACHER = os.environ.get("TEACHER", str(CACHE / "teachers/139714577ad63b5f"))  # as in sampled_run.sh


def main(out: Path) -> None:
    register()
    with initialize_config_dir(config_dir=str(HERE.parents[1] / "configs"), version_base="1.3"):
        overrides = [f"teacher.path={TEACHER}", "data.max_docs=120", "data.max_val_blocks=128"]
        cfg = compose(
            "train", overrides=[*overrides, f"hydra.runtime.output_dir={out}/agreement"], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    dm = prepare_data(cfg)
    models = {"teacher": AutoModelForCausalLM.from_pretrained(TEACHER).float()}
    for arm in ("topk", "sampled"):
        models[arm] = AutoModelForCausalLM.from_pretrained(out / f"train_{arm}/student").float()
    results = json.dumps(evaluate(models, dm.val_dataloader(), len(dm.tokenizer)), indent=1) + "\n"
    (out / "agreement.json").write_text(results)
    (HERE / "sampled_agreement.json").write_text(results)
    print(results)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sampled_exp"))
