"""Drive the web demo in headless Chromium as a person would, and save a screenshot after each stage.

    apt-get install -y chromium                      # Debian's browser
    pip install gradio playwright                    # playwright only drives it; no browser download
    python -m scripts.browser_check_app --out-dir results/browser_check [-- --gpt-ckpt digits.pt]

Starts `python app.py` (the digits model found in results/, or the flags after --) on a free port and checks:
a generation (gallery, elapsed-time line); every input error in the page (empty and out-of-range numbers, no
class) shown as an error line while the gallery keeps the last good result, and the line cleared by the next
action; a preset; "Send to the editor" with a sample of class 8, which must arrive with its class; an edit
with nothing painted; an inpainting that must run under class 8; a class-edit to 3; an uploaded picture, whose class the
page must ask for before editing. Exits non-zero with the reason if a stage fails. Made for the digits model (classes 0-9).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from PIL import Image

from autoregressive.utils.dist import free_port

SENT_CLASS = "8"  # a sample that is not class 0: the editor must not fall back to 0


def wait_for_page(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited with code {server.returncode} before serving the page")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no page at {url} after {timeout:.0f} s")


class Page:
    """The demo page in the browser: fields by elem_id, buttons, and the message boxes."""

    def __init__(self, page, out_dir: str, timeout_ms: int):
        self.page, self.out_dir, self.timeout_ms = page, out_dir, timeout_ms

    def fill(self, elem_id: str, text: str) -> None:
        field = self.page.locator(f"#{elem_id} input")
        field.fill(text)
        field.blur()  # gradio takes a number field's value on blur

    def click(self, elem_id: str) -> None:
        self.page.locator(f"#{elem_id}").click()

    def expect_line(self, box: str, needle: str, error: bool) -> str:
        """Wait until message box `box` shows a line holding `needle`, styled as an error or as a result."""
        kind = "arpg-error" if error else "arpg-ok"
        line = self.page.locator(f"#{box} .{kind}").filter(has_text=needle)
        try:
            line.wait_for(timeout=self.timeout_ms)
        except Exception:
            shown = self.page.locator(f"#{box}").inner_text().strip()
            self.shot(f"failed-{box}")
            raise RuntimeError(f"#{box} should show a{'n error' if error else ' result'} line with {needle!r}; "
                               f"it shows {shown!r}") from None
        return line.inner_text().strip()

    def expect_empty(self, box: str) -> None:
        text = self.page.locator(f"#{box}").inner_text().strip()
        if text:
            raise RuntimeError(f"#{box} should be cleared by the last action; it still shows {text!r}")

    def gallery_count(self, elem_id: str) -> int:
        return self.page.locator(f"#{elem_id} .grid-container img").count()

    def choose(self, elem_id: str, text: str) -> None:
        """Pick an entry of a dropdown by typing it and taking the first match."""
        field = self.page.locator(f"#{elem_id} input")
        field.click()
        field.fill(text)
        self.page.locator("ul[role='listbox'] li").filter(has_text=text).first.click()
        field.blur()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=os.path.join(self.out_dir, f"{name}.png"), full_page=True)


def paint_lower_half(page) -> None:
    """Pick the brush and paint strokes across the lower half of the picture, which the editor shows
    centred in its canvas at about 0.8 of the canvas height (a stroke must start on the picture)."""
    page.locator("#editor").get_by_role("button", name="Brush").first.click()
    box = page.locator("#editor canvas").first.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    side = 0.8 * box["height"]
    for fraction in (0.1, 0.2, 0.3, 0.4):
        y = centre_y + side * fraction
        page.mouse.move(centre_x - 0.42 * side, y)
        page.mouse.down()
        page.mouse.move(centre_x + 0.42 * side, y, steps=20)
        page.mouse.up()


def check_generate(ui: Page) -> int:
    ui.click("generate-button")
    print("generate:", ui.expect_line("generate-message", "img/s", error=False))
    images = ui.gallery_count("gallery")
    if images != 40:
        raise RuntimeError(f"the gallery should hold 10 classes x 4 images, it holds {images}")
    return images


def check_generate_errors(ui: Page, images: int) -> None:
    """Each bad field gets its own error line; the gallery keeps the last good images; the next good click
    clears the line."""
    cases = [("gen-seed", "", "seed is empty"), ("gen-seed", "1e30", "seed must be between 0 and"),
             ("gen-steps", "", "steps is empty"), ("gen-steps", "500", "steps must be between 1 and 64"),
             ("per-class", "", "images per class is empty"), ("per-class", "40", "images is 400"),
             ("gen-cfg", "", "CFG scale is empty"), ("gen-temperature", "-1", "temperature must be between"),
             ("gen-top-k", "", "top-k is empty"), ("gen-top-p", "0", "top-p must be above 0")]
    for elem_id, bad, needle in cases:
        good = ui.page.locator(f"#{elem_id} input").input_value()
        ui.fill(elem_id, bad)
        ui.click("generate-button")
        line = ui.expect_line("generate-message", needle, error=True)
        if ui.gallery_count("gallery") != images:
            raise RuntimeError(f"after {line!r} the gallery lost the previous images")
        print(f"{elem_id}={bad!r}: the page says {line!r}")
        if elem_id == "gen-seed" and bad == "":
            ui.shot("error")
        ui.fill(elem_id, good)
    ui.page.locator("#classes [title='Clear']").first.click()
    ui.click("generate-button")
    print("no classes: the page says", repr(ui.expect_line("generate-message", "classes is empty", error=True)))
    ui.page.locator("#presets").get_by_text("3 and 8 in 8 steps").click()  # classes 3 and 8, 8 images each
    ui.click("generate-button")
    print("preset:", ui.expect_line("generate-message", "16 images in", error=False))
    ui.shot("generate")


def check_send_and_edits(ui: Page, timeout_ms: int) -> None:
    ui.fill("pick", "99")
    ui.click("send-button")
    print("send sample 99:", repr(ui.expect_line("generate-message", "sample to edit must be between 1 and 16",
                                                error=True)))
    sample = 10  # the second picture of the second row: class 8
    ui.fill("pick", str(sample))
    ui.click("send-button")
    print("send:", ui.expect_line("edit-message", f"(class {SENT_CLASS}) is in the editor", error=False))
    ui.expect_empty("generate-message")
    carried = ui.page.locator("#image-class input").input_value()
    if carried != SENT_CLASS:
        raise RuntimeError(f"the editor's image class should be {SENT_CLASS} after sending sample {sample}, "
                           f"it is {carried!r}")
    ui.page.locator("#editor canvas").first.wait_for(timeout=timeout_ms)
    time.sleep(1)  # the editor draws the background after the canvas appears
    ui.click("edit-button")
    print("edit without a mask:", repr(ui.expect_line("edit-message", "nothing is painted", error=True)))

    paint_lower_half(ui.page)
    ui.shot("painted")
    ui.click("edit-button")
    line = ui.expect_line("edit-message", f"under class {SENT_CLASS},", error=False)
    print("inpaint:", line)
    ui.shot("edit")

    ui.page.get_by_role("radio", name="class-edit").check()
    ui.choose("new-class", "3")
    ui.click("edit-button")
    print("class-edit:", ui.expect_line("edit-message", "class-edit: kept", error=False))
    ui.expect_line("edit-message", "under class 3,", error=False)
    ui.shot("class_edit")


def check_upload(ui: Page) -> None:
    """An uploaded picture: the page clears the image class and asks for it; an edit without it is refused."""
    picture = np.zeros((256, 256, 3), np.uint8)
    picture[64:192, 112:144] = 255  # a bar, something like a 1
    path = os.path.join(tempfile.mkdtemp(), "upload.png")
    Image.fromarray(picture).save(path)
    ui.page.locator("#editor input[type='file']").first.set_input_files(path)
    time.sleep(2)  # the editor draws the upload
    ui.page.get_by_role("radio", name="inpaint").check()
    paint_lower_half(ui.page)
    ui.click("edit-button")  # the image class still shows the sent sample's 7, which is not this picture's
    print("edit of an upload:", repr(ui.expect_line("edit-message", "which class is this picture?", error=True)))
    ui.shot("upload")
    ui.choose("image-class", "1")
    ui.click("edit-button")
    print("edit of an upload as class 1:", ui.expect_line("edit-message", "under class 1,", error=False))


def check(page, out_dir: str, timeout_ms: int) -> None:
    ui = Page(page, out_dir, timeout_ms)
    page.locator("#generate-button").wait_for(timeout=timeout_ms)
    images = check_generate(ui)
    check_generate_errors(ui, images)
    check_send_and_edits(ui, timeout_ms)
    check_upload(ui)


def main() -> None:
    parser = argparse.ArgumentParser(description="Check the web demo in headless Chromium.")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser binary (Debian's package)")
    parser.add_argument("--out-dir", default="results/browser_check")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per stage")
    parser.add_argument("app_args", nargs="*", help="passed to app.py after --, e.g. -- --gpt-ckpt d.pt")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    os.makedirs(args.out_dir, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args.app_args])
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_page(url, server)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            check(page, args.out_dir, int(args.timeout * 1000))
            browser.close()
        print(f"all stages passed; screenshots in {args.out_dir}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
