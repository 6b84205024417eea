"""The web demo's back end (demo/) without gradio: finding the checkpoint, the gallery, the sample's class
carried to the editor, painted-mask edits, one sampler per decoding layout, and every bad input answered
by one line while a bug still raises."""
import logging
import os
import sys

import numpy as np
import pytest
import torch

import demo.model
from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.cli import UserError
from demo.actions import BUG_LINE, PICKED, Actions, Reply, answer, painted_area
from demo.classes import ClassNames
from demo.fields import Settings
from demo.model import DIGITS_ZOOM, demo_model, find_checkpoint
from demo.presets import page_defaults, presets

SAMPLING = dict(steps=8, cfg_scale=2.0, cfg_schedule="linear", temperature=1.0, top_k=0, top_p=1.0,
                kv_cache="weights", compiled=False, seed=0)
SIDE = 8 * DIGITS_ZOOM  # a digit in the editor and the gallery: 256 px


def flags(*argv):
    """app.py's flags, as a user types them."""
    from app import get_args_parser

    return get_args_parser().parse_args(list(argv))


def controls(**changes) -> list:
    """The sampling controls as the page passes them (Settings.FIELDS order)."""
    values = {**SAMPLING, **changes}
    assert len(values) == len(Settings.FIELDS)
    return list(values.values())


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"]()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the head starts at zero: samples would be uniform noise
    path = tmp_path_factory.mktemp("run") / "digits.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def app(digits_ckpt):
    app = Actions.open(flags("--gpt-ckpt", digits_ckpt, "--device", "cpu"))
    assert app.demo is not None, app.status
    return app


def brush(rows: slice, cols: slice = slice(None)) -> np.ndarray:
    """An RGBA layer as the editor returns it: opaque red where painted, transparent elsewhere."""
    layer = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    layer[rows, cols] = (255, 48, 48, 255)
    return layer


def painted_lower_half(picture) -> dict:
    return {"background": picture, "layers": [brush(slice(SIDE // 2, SIDE))]}


def test_finds_the_newest_digits_checkpoint(tmp_path):
    assert find_checkpoint(str(tmp_path)) is None
    older = tmp_path / "digits" / "000-ARPG-digits" / "checkpoints" / "0001200.pt"
    newer = tmp_path / "digits" / "001-ARPG-digits" / "checkpoints" / "0000600.pt"
    for path, mtime in ((older, 1_000), (newer, 2_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    (tmp_path / "other" / "000-ARPG-L" / "checkpoints").mkdir(parents=True)
    (tmp_path / "other" / "000-ARPG-L" / "checkpoints" / "0009999.pt").write_bytes(b"")
    assert find_checkpoint(str(tmp_path)) == str(newer)


def test_without_a_checkpoint_every_action_answers_with_the_fix(tmp_path):
    app = Actions.open(flags("--results-dir", str(tmp_path)))
    assert app.demo is None and "bash scripts/demo.sh" in app.status
    reply = answer(app.generate, ["1"], 1, *controls())
    assert reply.error and reply.result is None and "bash scripts/demo.sh" in reply.message
    reply = answer(app.edit, painted_lower_half(np.zeros((SIDE, SIDE, 3), np.uint8)), PICKED, "inpaint", "1", None, 1,
                   *controls())
    assert reply.error and "scripts/demo.sh" in reply.message
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert "not a readable PyTorch checkpoint" in Actions.open(flags("--gpt-ckpt", str(broken))).status
    assert "--gpt-ckpt" in Actions.open(flags("--gpt-ckpt", str(tmp_path / "missing.pt"))).status


def test_generate_gives_a_gallery_row_per_class_and_follows_the_seed(app):
    reply = answer(app.generate, ["3", "5", "7"], 2, *controls())
    generation = reply.result
    assert not reply.error and reply.message.startswith("6 images in ") and "img/s), seed 0, 8 steps" in reply.message
    assert generation.images.shape == (6, SIDE, SIDE, 3) and generation.images.dtype == np.uint8
    assert generation.labels == (3, 3, 5, 5, 7, 7) and generation.per_row == 2
    assert [caption for _, caption in generation.gallery()] == ["class 3", "class 3", "class 5", "class 5",
                                                                "class 7", "class 7"]
    same, _ = app.generate(["3", "5", "7"], 2, *controls())
    other, _ = app.generate(["3", "5", "7"], 2, *controls(seed=1))
    assert np.array_equal(generation.images, same.images) and not np.array_equal(generation.images, other.images)


def test_one_sampler_per_decoding_layout_across_clicks(app, monkeypatch):
    """On CUDA a sampler keeps its captured graphs: clicks with a layout seen before reuse its sampler."""
    built = []
    make_sampler = demo.model.make_sampler
    monkeypatch.setattr(demo.model, "make_sampler", lambda *a, **k: built.append(1) or make_sampler(*a, **k))
    app.demo.samplers.clear()
    for per_class, seed in ((2, 0), (2, 1), (2, 2), (3, 0), (2, 3)):
        app.generate(["1", "2"], per_class, *controls(seed=seed))
    assert len(built) == 2  # 4 images, then 6; the seed is not part of a layout
    app.generate(["1", "2"], 2, *controls(temperature=0.5, top_k=3))  # drawing settings: same graphs
    assert len(built) == 2
    app.generate(["1", "2"], 2, *controls(steps=4))
    assert len(built) == 3
    generation, _ = app.generate(["4"], 1, *controls())
    for _ in range(2):
        app.edit(painted_lower_half(generation.images[0]), PICKED, "inpaint", "4", None, 2, *controls())
    assert len(built) == 5


def test_a_rendered_sample_reads_back_as_its_own_tokens(app):
    tokens = torch.randint(0, 17, (3, 64), generator=torch.Generator().manual_seed(0))
    for picture, expected in zip(app.demo.render(tokens), tokens):
        assert torch.equal(app.demo.encode(picture).reshape(-1), expected)


def test_inpaint_keeps_the_unpainted_half_and_outpaint_the_painted_half(app):
    generation, _ = app.generate(["4"], 1, *controls())
    for task, kept in (("inpaint", slice(0, SIDE // 2)), ("outpaint", slice(SIDE // 2, SIDE))):
        gallery, message = app.edit(painted_lower_half(generation.images[0]), PICKED, task, "4", None, 3,
                                  *controls())
        assert message.startswith(f"{task}: kept 32 of 64 tokens") and "under class 4" in message, message
        (original, _), (dimmed, _), *results = gallery
        assert [caption for _, caption in results] == ["result 1", "result 2", "result 3"]
        assert np.array_equal(original, generation.images[0])
        assert all(np.array_equal(result[kept], original[kept]) for result, _ in results)
        changed = slice(SIDE // 2, None) if task == "inpaint" else slice(0, SIDE // 2)
        assert any(not np.array_equal(result[changed], original[changed]) for result, _ in results)
        assert (dimmed[changed] <= original[changed]).all() and np.array_equal(dimmed[kept], original[kept])


def test_the_sample_sent_to_the_editor_brings_its_class_and_the_edit_runs_under_it(app):
    generation, _ = app.generate(["7", "3"], 2, *controls())
    (value, label, origin), message = app.send(generation, 3)  # row 2: class 3
    assert label == "3" and np.array_equal(value["background"], generation.images[2]) and value["layers"] == []
    assert message.startswith("sample 3 (class 3) is in the editor: 256x256 px, 8x8 tokens")
    value["layers"] = [brush(slice(SIDE // 2, SIDE))]
    value["background"] = np.clip(value["background"] + 3, 0, 255)  # the browser may re-encode it lossily
    gallery, message = app.edit(value, origin, "inpaint", label, None, 2, *controls())
    assert "under class 3" in message
    under_zero, _ = app.edit(value, PICKED, "inpaint", "0", None, 2, *controls())
    assert not np.array_equal(gallery[2][0], under_zero[2][0])  # the class decides the result
    edited, message = app.edit(value, origin, "class-edit", label, "9", 2, *controls())
    assert "under class 9" in message and not np.array_equal(edited[2][0], gallery[2][0])


def test_an_uploaded_picture_asks_for_its_class(app):
    generation, _ = app.generate(["7"], 1, *controls())
    (_, label, origin), _ = app.send(generation, 1)
    upload = painted_lower_half(255 - generation.images[0])  # another picture, sent sample's class still shown
    for origin_now in (origin, None):
        reply = answer(app.edit, upload, origin_now, "inpaint", label, None, 1, *controls())
        assert reply.error and "which class is this picture?" in reply.message, reply.message
    assert "under class 7" in app.edit(upload, PICKED, "inpaint", label, None, 1, *controls())[1]


@pytest.mark.parametrize("generation, pick, needle", [
    (None, 1, "generate images first"), ("made", 5, "sample to edit must be between 1 and 4, got 5"),
    ("made", None, "sample to edit is empty"),
])
def test_bad_sends_are_answered_with_a_line(app, generation, pick, needle):
    made = app.generate(["1"], 4, *controls(steps=2))[0] if generation else None
    reply = answer(app.send, made, pick)
    assert reply.error and reply.result is None and needle in reply.message, reply.message


def test_a_token_counts_as_painted_from_a_quarter_of_its_area(app):
    zoom = DIGITS_ZOOM
    mostly = np.zeros((SIDE, SIDE), np.float32)
    mostly[:zoom // 2, :zoom // 2] = 1  # a quarter of token (0, 0)
    mostly[zoom:zoom + zoom // 8, :zoom] = 1  # an eighth of token (1, 0)
    mask = app.demo.token_mask(mostly)
    assert mask[0, 0] and not mask[1, 0] and int(mask.sum()) == 1


def test_editor_values_with_grey_pictures_and_opaque_layers():
    picture, painted = painted_area({"background": np.full((4, 4), 9, np.uint8),
                                     "layers": [np.full((4, 4, 3), [0, 255, 0], np.uint8)]})
    assert picture.shape == (4, 4, 3) and (picture == 9).all() and (painted == 1).all()


BLANK = np.zeros((SIDE, SIDE, 3), np.uint8)


@pytest.mark.parametrize("value, task, image_class, new_class, results, changes, needle", [
    ({"background": BLANK, "layers": []}, "inpaint", "1", None, 2, {}, "nothing is painted"),
    ({"background": BLANK, "layers": [brush(slice(None))]}, "inpaint", "1", None, 2, {}, "covers the whole image"),
    ({"background": BLANK, "layers": [brush(slice(None))[:100]]}, "inpaint", "1", None, 2, {},
     "the mask is 256x100 but the image is 256x256"),
    ({"background": None, "layers": []}, "inpaint", "1", None, 2, {}, "no image to edit"),
    (None, "inpaint", "1", None, 2, {}, "no image to edit"),
    (painted_lower_half(BLANK), "inpaint", "12", None, 2, {}, "image class: class id 12 is out of range"),
    (painted_lower_half(BLANK), "inpaint", None, None, 2, {}, "which class is this picture?"),
    (painted_lower_half(BLANK), "class-edit", "1", None, 2, {}, "new class is empty"),
    (painted_lower_half(BLANK), "class-edit", "1", "eleven", 2, {}, "new class: no class named 'eleven'"),
    (painted_lower_half(BLANK), "inpaint", "1", None, None, {}, "results is empty"),
    (painted_lower_half(BLANK), "inpaint", "1", None, 17, {}, "results must be between 1 and 16, got 17"),
    (painted_lower_half(BLANK), "inpaint", "1", None, 2, {"steps": 0}, "steps must be between 1 and 64, got 0"),
    (painted_lower_half(BLANK), "inpaint", "1", None, 2, {"seed": None}, "seed is empty"),
    (painted_lower_half(BLANK), "erase", "1", None, 2, {}, "unknown task"),
])
def test_bad_edits_are_answered_with_a_line(app, value, task, image_class, new_class, results, changes, needle):
    reply = answer(app.edit, value, PICKED, task, image_class, new_class, results, *controls(**changes))
    assert reply.error and reply.result is None and reply.message.startswith("Error: ") and needle in reply.message, \
        reply.message


@pytest.mark.parametrize("classes, per_class, changes, needle", [
    ([], 1, {}, "classes is empty"), (["2", "x"], 1, {}, "no class named 'x'"), ("2, 13", 1, {}, "class id 13"),
    (["1", "2"], 40, {}, "2 classes x 40 images is 80"), (["1"], None, {}, "images per class is empty"),
    (["1"], 2.5, {}, "images per class must be a whole number, got 2.5"),
    (["1"], 1, {"seed": None}, "seed is empty: enter a number"),
    (["1"], 1, {"seed": 1e30}, "seed must be between 0 and 9223372036854775807, got 1e+30"),
    (["1"], 1, {"seed": -1}, "seed must be between 0"),
    (["1"], 1, {"steps": None}, "steps is empty"), (["1"], 1, {"steps": 65}, "steps must be between 1 and 64"),
    (["1"], 1, {"cfg_scale": None}, "CFG scale is empty"), (["1"], 1, {"cfg_scale": -1}, "CFG scale must be"),
    (["1"], 1, {"temperature": None}, "temperature is empty"), (["1"], 1, {"temperature": -1}, "temperature must"),
    (["1"], 1, {"top_k": None}, "top-k is empty"), (["1"], 1, {"top_k": -1}, "top-k must be between 0 and 17"),
    (["1"], 1, {"top_p": 0}, "top-p must be above 0"), (["1"], 1, {"top_p": None}, "top-p is empty"),
    (["1"], 1, {"kv_cache": "int4"}, "KV cache must be one of weights, int8, fp8"),
    (["1"], 1, {"compiled": True}, "compiled layers run on CUDA only"),
])
def test_bad_generations_are_answered_with_a_line(app, classes, per_class, changes, needle):
    reply = answer(app.generate, classes, per_class, *controls(**changes))
    assert reply.error and reply.result is None and reply.message.startswith("Error: ") and needle in reply.message, \
        reply.message


def test_a_bug_raises_in_the_action_and_answers_a_generic_line_with_the_traceback_logged(app, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in a kernel")

    monkeypatch.setattr(app.demo, "render", broken)
    with pytest.raises(RuntimeError):
        app.generate(["1"], 1, *controls())
    with caplog.at_level(logging.ERROR, logger="arpg.demo"):
        reply = answer(app.generate, ["1"], 1, *controls())
    assert reply.error and reply.message == BUG_LINE and "shape mismatch" not in reply.message
    assert "shape mismatch in a kernel" in caplog.text and "Traceback" in caplog.text


def test_errors_and_results_are_shown_apart_and_escaped():
    assert 'class="arpg-message arpg-error" role="alert">Error: a &lt;b&gt;' in Reply(None, "Error: a <b>", True).html()
    assert 'class="arpg-message arpg-ok">done' in Reply(1, "done").html()
    assert Reply(None, "").html() == ""  # an empty line clears the message box


def test_imagenet_classes_by_name_and_id():
    names = ClassNames.for_model(1000, imagenet=True)
    assert names.choice(207) == "207: golden retriever" and len(names.choices) == 1000
    assert [names.parse(entry) for entry in ("207: golden retriever", "Golden Retriever", "207", 207)] == [207] * 4
    with pytest.raises(UserError, match="class id 1000 is out of range; this model has classes 0..999"):
        names.parse("1000")
    assert ClassNames.for_model(10, imagenet=False).choices == [str(digit) for digit in range(10)]


def test_page_defaults_and_presets_fit_the_model(app):
    defaults, rows = page_defaults(app.demo), presets(app.demo)
    assert defaults.classes == [str(digit) for digit in range(10)] and defaults.image_size == SIDE
    assert presets(None) == {} and len(rows) == 3
    for classes, per_class, *fields, seed in rows.values():  # each preset passes the page's checks
        assert len(app.demo.classes.parse_many(classes)) * per_class <= 64
        app.settings(*fields, "weights", False, seed)


def test_app_without_gradio_says_how_to_install_it(monkeypatch):
    from app import get_args_parser, main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(SystemExit, match="pip install gradio"):
        main(get_args_parser().parse_args([]))


def test_imagenet_model_names_its_classes_and_crops_picture_and_mask_alike(tmp_path):
    """A VQ model (tiny ARPG, a small random VQ with VQ-16's 16x downsampling): an uploaded 400x256 picture is
    ADM centre-cropped to 256 and so is its mask; painting the left 200 columns leaves the crop's left 128
    columns, 8 of the 16 token columns."""
    from tokenizer.vq_model import VQ_16

    torch.manual_seed(0)
    vq = VQ_16(base_channels=16, z_channels=16, norm_groups=8, num_res_blocks=1).eval()
    app = Actions(demo_model(ARPG_models["ARPG-tiny"]().eval(), vq), "ARPG-tiny")
    assert app.demo.grid == 16 and app.demo.image_size == 256
    generation, message = app.generate(["207: golden retriever"], 1, *controls())
    assert generation.images.shape == (1, 256, 256, 3) and generation.captions == ("207: golden retriever",)
    assert page_defaults(app.demo).classes[0] == "207: golden retriever"
    picture = np.random.default_rng(0).integers(0, 256, (256, 400, 3), dtype=np.uint8)
    layer = np.zeros((256, 400, 4), np.uint8)
    layer[:, :200, 3] = 255
    gallery, message = app.edit({"background": picture, "layers": [layer]}, PICKED, "inpaint", "golden retriever",
                                None, 1, *controls())
    assert message.startswith("inpaint: kept 128 of 256 tokens") and "under 207: golden retriever" in message
    assert len(gallery) == 3 and gallery[2][0].shape == (256, 256, 3)


def test_a_model_of_vq_tokens_without_a_tokenizer_is_refused(tmp_path):
    gpt = tmp_path / "gpt.pt"
    torch.save({"model": ARPG_models["ARPG-tiny"]().state_dict()}, gpt)
    app = Actions.open(flags("--gpt-model", "ARPG-tiny", "--gpt-ckpt", str(gpt), "--device", "cpu"))
    assert app.demo is None and "--vq-ckpt" in app.status


def test_released_weights_load_by_name(monkeypatch):
    """`python app.py --gpt-model ARPG-XL` asks the Hub for the released file and the VQ-16 tokenizer, as the
    samplers do; offline, the page says what to do instead."""
    import autoregressive.pretrained as pretrained
    from autoregressive.utils.cli import InputNotFound

    asked = []

    def offline(file):
        asked.append(f"{file.repo_id}/{file.filename}")
        raise InputNotFound(f"{file.repo_id}/{file.filename} is not in the Hugging Face cache")

    monkeypatch.setattr(pretrained, "download", offline)
    app = Actions.open(flags("--gpt-model", "ARPG-XL"))
    assert asked == ["hp-l33/ARPG/arpg_700m.pt"] and app.demo is None
    assert app.status == "could not load ARPG-XL: hp-l33/ARPG/arpg_700m.pt is not in the Hugging Face cache"
    Actions.open(flags("--gpt-model", "ARPG-L", "--gpt-ckpt", "hf://someone/repo/mine.pt@v1"))
    assert asked[-1] == "someone/repo/mine.pt"
