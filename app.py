"""Web demo: sample a grid of chosen classes, and edit a picture (inpaint, outpaint, class edit) under a mask
painted with the brush. Needs gradio (`pip install gradio`), which the rest of the code base does not.

    python app.py                     # the digits model that `bash scripts/demo.sh` trained (results/), on the CPU
    python app.py --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt --vq-ckpt vq_ds16_c2i.pt --device cuda

What the buttons do lives in autoregressive/demo_app.py (tested without gradio); this file only lays out the page.
"""
import argparse
import sys

from autoregressive.demo_app import TASKS, DemoApp, page_defaults
from autoregressive.models.arpg import ARPG_models
from autoregressive.weights import PRECISIONS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ARPG web demo (gradio).")
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default="ARPG-digits")
    parser.add_argument("--gpt-ckpt", default=None, help="default: the newest digits run under --results-dir")
    parser.add_argument("--vq-model", default="VQ-16")
    parser.add_argument("--vq-ckpt", default=None, help="VQ tokenizer; needed by the ImageNet models")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default=None,
                        help="default: cpu for the digits model, auto (CUDA when present) with --vq-ckpt")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="none", help="weights dtype")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def sampling_controls(gr, steps_max: int, defaults):
    """Steps, CFG scale, CFG schedule, temperature and seed, in that order."""
    with gr.Row():
        steps = gr.Slider(1, steps_max, value=defaults.steps, step=1, label="steps")
        cfg_scale = gr.Slider(1.0, 10.0, value=defaults.cfg_scale, step=0.5, label="CFG scale")
        cfg_schedule = gr.Radio(["linear", "constant"], value="linear", label="CFG schedule")
    with gr.Row():
        temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="temperature (0 = greedy)")
        seed = gr.Number(value=0, precision=0, label="seed")
    return [steps, cfg_scale, cfg_schedule, temperature, seed]


def build_page(gr, app: DemoApp):
    defaults = page_defaults(app.demo)
    steps_max = app.demo.model.config.block_size if app.demo else 64
    with gr.Blocks(title="ARPG demo") as page:
        gr.Markdown(f"# ARPG: randomized parallel decoding\n{app.status}")
        samples = gr.State([])
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    classes = gr.Textbox(defaults.classes, label="class ids (space or comma separated)")
                    per_class = gr.Slider(1, 8, value=defaults.per_class, step=1, label="images per class")
                controls = sampling_controls(gr, steps_max, defaults)
                generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                generate_message = gr.Markdown(elem_id="generate-message")
                grid = gr.Image(label="one row per class", type="numpy", interactive=False, elem_id="grid")
                with gr.Row():
                    pick = gr.Number(value=1, precision=0, label="sample to edit (1 = top left, row by row)")
                    send = gr.Button("Send to the editor", elem_id="send-button")
            with gr.Tab("Edit", id="edit"):
                gr.Markdown("Paint over the image with the brush; "
                            + "; ".join(f"**{task}**: {what}" for task, what in TASKS.items()) + ".")
                editor = gr.ImageEditor(type="numpy", image_mode="RGB", label="image and mask", elem_id="editor",
                                        brush=gr.Brush(colors=["#ff3030"], default_size=24, color_mode="fixed"),
                                        layers=False, transforms=(), canvas_size=(256, 256))
                with gr.Row():
                    task = gr.Radio(list(TASKS), value="inpaint", label="task")
                    class_label = gr.Number(value=int(defaults.classes.split()[0]), precision=0,
                                            label="class (the image's, or the new one for class-edit)")
                    num_results = gr.Slider(1, 8, value=4, step=1, label="results")
                edit_controls = sampling_controls(gr, steps_max, defaults)
                edit = gr.Button("Edit", variant="primary", elem_id="edit-button")
                edit_message = gr.Markdown(elem_id="edit-message")
                edited = gr.Image(label="input, mask (kept area bright), results", type="numpy", interactive=False,
                                  elem_id="edited")

        def on_generate(*values):
            result, message = app.generate(*values)
            return (None, [], message) if result is None else (result[0], list(result[1]), message)

        def on_send(pictures, index):
            if not pictures:
                return gr.update(), gr.Tabs(), "Error: generate a grid first"
            index = min(max(int(index or 1), 1), len(pictures)) - 1
            picture = pictures[index]
            return {"background": picture, "layers": [], "composite": picture}, gr.Tabs(selected="edit"), ""

        generate.click(on_generate, [classes, per_class, *controls], [grid, samples, generate_message])
        send.click(on_send, [samples, pick], [editor, tabs, generate_message])
        edit.click(app.edit, [editor, task, class_label, num_results, *edit_controls], [edited, edit_message])
    return page


def main(args) -> None:
    try:
        import gradio as gr
    except ImportError:
        sys.exit("the web demo needs gradio: pip install gradio")
    device = args.device or ("auto" if args.vq_ckpt else "cpu")
    app = DemoApp.open(args.gpt_model, args.gpt_ckpt, args.vq_model, args.vq_ckpt, device, args.precision,
                       args.results_dir)
    print(app.status)
    build_page(gr, app).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
