"""Web demo: generate a gallery of chosen classes, and edit a picture (inpaint, outpaint, class edit) under a
mask painted with the brush. Needs gradio (`pip install gradio`), which the rest of the code base does not.

    python app.py                          # the digits model that `bash scripts/demo.sh` trained (results/), CPU
    python app.py --gpt-model ARPG-XL      # the released weights and VQ-16 tokenizer, fetched from the Hub

What the buttons do lives in demo/ (tested without gradio); this file lays out the page and wires it up.
See docs/web_demo.md.
"""
import argparse
import logging
import sys

from autoregressive.model_args import add_model_args
from autoregressive.sampling import CFG_SCHEDULES, KV_CACHE_DTYPES
from demo.actions import PICKED, TASKS, Actions, answer
from demo.presets import ABOUT, CONTROLS_HELP, page_defaults, presets

CSS = """
.arpg-message { padding: 6px 10px; border-radius: 6px; border-left: 4px solid #3a7d44; background: #eef7ef; }
.arpg-error { border-left-color: #c62828; background: #fdecea; color: #8e1c1c; font-weight: 600; }
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ARPG web demo (gradio).")
    add_model_args(parser, gpt_model="ARPG-digits")
    parser.add_argument("--results-dir", default="results",
                        help="where the digits model is looked for when --gpt-ckpt is omitted")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default=None,
                        help="default: cpu for the digits model, else auto (CUDA when present)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def sampling_controls(gr, prefix: str, defaults, max_steps: int, cuda: bool):
    """The controls of Settings.FIELDS, in that order; elem_ids <prefix>-steps, <prefix>-seed, ..."""
    with gr.Row():
        steps = gr.Number(defaults.steps, precision=0, label="steps", info=f"1 to {max_steps}",
                          elem_id=f"{prefix}-steps")
        cfg_scale = gr.Number(defaults.cfg_scale, label="CFG scale", info="1 = no guidance",
                              elem_id=f"{prefix}-cfg")
    cfg_schedule = gr.Radio(list(CFG_SCHEDULES), value="linear", label="CFG schedule")
    with gr.Row():
        temperature = gr.Number(1.0, label="temperature", info="0 = greedy", elem_id=f"{prefix}-temperature")
        seed = gr.Number(0, precision=0, label="seed", elem_id=f"{prefix}-seed")
    with gr.Row():
        top_k = gr.Number(0, precision=0, label="top-k", info="0 = off", elem_id=f"{prefix}-top-k")
        top_p = gr.Number(1.0, label="top-p", info="1 = off", elem_id=f"{prefix}-top-p")
    with gr.Row():
        kv_cache = gr.Radio(list(KV_CACHE_DTYPES), value="weights", label="KV cache")
        compiled = gr.Checkbox(False, label="compiled layers", interactive=cuda,
                               info="torch.compile, CUDA only" if cuda else "CUDA only; this page runs on the CPU")
    return [steps, cfg_scale, cfg_schedule, temperature, top_k, top_p, kv_cache, compiled, seed]


def build_page(gr, actions: Actions):
    demo = actions.demo
    defaults = page_defaults(demo)
    choices = demo.classes.choices if demo else []
    max_steps = demo.model.config.block_size if demo else 64
    cuda = bool(demo) and demo.device.type == "cuda"
    keep = gr.update  # an output left as it is: a failed action keeps the last good result

    with gr.Blocks(title="ARPG demo") as page:
        gr.Markdown(f"# ARPG: randomized parallel decoding\n{ABOUT}\n\n**Model:** {actions.status}")
        with gr.Accordion("What the controls do", open=False):
            gr.Markdown(CONTROLS_HELP)
        generation = gr.State(None)
        origin = gr.State(None)  # the picture the image class came with, or PICKED by hand
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        classes = gr.Dropdown(choices, value=defaults.classes, multiselect=True, label="classes",
                                              info="type to search by name or id", elem_id="classes")
                        per_class = gr.Number(defaults.per_class, precision=0, label="images per class",
                                              elem_id="per-class")
                        controls = sampling_controls(gr, "gen", defaults, max_steps, cuda)
                        generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    with gr.Column(scale=3):
                        generate_message = gr.HTML(elem_id="generate-message")
                        gallery = gr.Gallery(label="a row per class (click to enlarge)", columns=defaults.per_class, height="auto",
                                             buttons=["download", "download_all", "fullscreen"], object_fit="contain",
                                             elem_id="gallery")
                        with gr.Row():
                            pick = gr.Number(1, precision=0, label="sample to edit (1 = top left, row by row; "
                                             "or click one)", elem_id="pick")
                            send = gr.Button("Send to the editor", elem_id="send-button")
                examples = presets(demo)
                if examples:
                    gr.Examples(list(examples.values()), [classes, per_class, *controls[:6], controls[-1]],
                                label="presets (click one, then Generate)", example_labels=list(examples),
                                elem_id="presets")
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column(scale=1):
                        task = gr.Radio(list(TASKS), value="inpaint", label="task",
                                        info="; ".join(f"{name}: {what}" for name, what in TASKS.items()))
                        image_class = gr.Dropdown(choices, value=None, label="image class",
                                                  info="the picture's class; a sent sample brings its own",
                                                  elem_id="image-class")
                        new_class = gr.Dropdown(choices, value=None, label="new class (class-edit)",
                                                elem_id="new-class")
                        num_results = gr.Number(4, precision=0, label="results", elem_id="num-results")
                        edit_controls = sampling_controls(gr, "edit", defaults, max_steps, cuda)
                        edit = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    with gr.Column(scale=3):
                        editor = gr.ImageEditor(type="numpy", image_mode="RGB", label="paint what to change",
                                                elem_id="editor", layers=False, transforms=(),
                                                brush=gr.Brush(colors=["#ff3030"], default_size=24,
                                                               color_mode="fixed"),
                                                canvas_size=(defaults.image_size, defaults.image_size))
                        edit_message = gr.HTML(elem_id="edit-message")
                        edited = gr.Gallery(label="input, kept area (bright), results", columns=6, height="auto",
                                            buttons=["download", "download_all", "fullscreen"], object_fit="contain",
                                            elem_id="edited")

        def on_generate(last, *values):
            reply = answer(actions.generate, *values)
            if reply.result is None:
                return keep(), last, reply.html()
            result = reply.result
            return gr.Gallery(value=result.gallery(), columns=result.per_row), result, reply.html()

        def on_pick(selected: gr.SelectData):
            return selected.index + 1

        def on_send(last, index):
            reply = answer(actions.send, last, index)
            if reply.result is None:
                return keep(), keep(), keep(), keep(), reply.html(), ""
            value, label, picture = reply.result
            return value, label, picture, gr.Tabs(selected="edit"), "", reply.html()

        def on_edit(*values):
            reply = answer(actions.edit, *values)
            return (keep() if reply.result is None else reply.result), reply.html()

        generate.click(on_generate, [generation, classes, per_class, *controls], [gallery, generation, generate_message])
        gallery.select(on_pick, None, pick)
        send.click(on_send, [generation, pick], [editor, image_class, origin, tabs, generate_message, edit_message])
        image_class.input(lambda: PICKED, None, origin)  # a class picked by hand names whatever is in the editor
        edit.click(on_edit, [editor, origin, task, image_class, new_class, num_results, *edit_controls],
                   [edited, edit_message])
    return page


def main(args) -> None:
    try:
        import gradio as gr
    except ImportError:
        sys.exit("the web demo needs gradio: pip install gradio")
    logging.basicConfig(level=logging.INFO)
    actions = Actions.open(args)
    print(actions.status)
    build_page(gr, actions).launch(server_name=args.host, server_port=args.port, css=CSS)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
