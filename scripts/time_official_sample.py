"""Runs the official sample_c2i_ddp.py (github hp-l33/ARPG, not part of this project) unchanged, with its
stages timed, for scripts/bench_sample_ddp.py: launch it as the official README launches the script,

    ARPG_OFFICIAL_REPO=/path/to/ARPG ARPG_STAGE_TIMES=times.json \\
        torchrun --nproc_per_node=1 scripts/time_official_sample.py --gpt-model ARPG-L ...

Its model's generate(), its VQ model's decode_code() and PIL's Image.save are wrapped with timers (the
GPU ones synchronise around the call), and the stage times go to ARPG_STAGE_TIMES as JSON in the layout
of sample_c2i_ddp.py's --timings.
"""
import json
import os
import runpy
import sys
import time

LAUNCHED = time.time()


def timed(function, stage: str, seconds: dict, marks: dict, cuda: bool):
    import torch

    def run(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        marks.setdefault(f"start_{stage}", time.time())
        start = time.perf_counter()
        result = function(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
        marks.setdefault(f"first_{stage}", time.time())
        marks[f"last_{stage}"] = time.time()
        return result
    return run


def main() -> None:
    repo, out = os.environ["ARPG_OFFICIAL_REPO"], os.environ["ARPG_STAGE_TIMES"]
    from scripts.official_code import install_transformers_stand_in  # PYTHONPATH: this project's root

    sys.path.insert(0, repo)
    install_transformers_stand_in()
    import models.arpg
    import models.vq_model
    from PIL import Image

    seconds, marks = {}, {"imported": time.time()}
    models.arpg.Transformer.generate = timed(models.arpg.Transformer.generate, "model", seconds, marks, True)
    models.vq_model.VQModel.decode_code = timed(models.vq_model.VQModel.decode_code, "vq_decode", seconds, marks,
                                                True)
    Image.Image.save = timed(Image.Image.save, "write", seconds, marks, False)
    sys.argv = [os.path.join(repo, "sample_c2i_ddp.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    end = time.time()
    # The official script packs right after its last PNG (and a barrier): that stretch is its packing.
    seconds["pack"] = end - marks["last_write"]
    marks.update(loaded=marks["start_model"], first_batch_sampled=marks["first_model"], sampled=marks["last_write"],
                 packed=end)
    with open(out, "w") as file:
        json.dump({"launched": LAUNCHED, "seconds": seconds, "marks": marks}, file, indent=1)


if __name__ == "__main__":
    main()
