"""Drive the web demo in headless Chromium: one generation, one refused edit (nothing painted), one edit.

    apt-get install -y chromium                      # Debian's browser
    pip install gradio playwright                    # playwright only drives it; no browser download
    python -m scripts.browser_check_app --out-dir results/browser_check

Starts `python app.py` (the digits model found in results/, or --gpt-ckpt) on a free port, loads the page,
clicks Generate, sends the first sample to the editor, paints its lower half with the brush, runs an
inpainting and saves a screenshot after each stage. Exits non-zero with the reason if a stage fails.
"""
import argparse
import os
import subprocess
import sys
import time
import urllib.request

from autoregressive.utils.dist import free_port


def wait_for_page(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
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


def check(page, out_dir: str, timeout_ms: int) -> None:
    page.get_by_role("button", name="Generate").click()
    page.locator("#generate-message").get_by_text("samples of classes").wait_for(timeout=timeout_ms)
    page.locator("#grid img").wait_for(timeout=timeout_ms)
    page.screenshot(path=os.path.join(out_dir, "generate.png"), full_page=True)
    print("generate: grid shown;", page.locator("#generate-message").inner_text().strip())

    page.locator("#send-button").click()
    page.locator("#editor canvas").first.wait_for(timeout=timeout_ms)
    time.sleep(1)  # the editor draws the background after the canvas appears
    page.locator("#edit-button").click()
    refusal = page.locator("#edit-message").get_by_text("nothing is painted")
    refusal.wait_for(timeout=timeout_ms)
    print("edit without a mask: the page says", repr(refusal.inner_text().strip()))

    paint_lower_half(page)
    page.screenshot(path=os.path.join(out_dir, "painted.png"), full_page=True)
    page.locator("#edit-button").click()
    page.locator("#edit-message").get_by_text("inpaint: kept").wait_for(timeout=timeout_ms)
    page.locator("#edited img").wait_for(timeout=timeout_ms)
    page.screenshot(path=os.path.join(out_dir, "edit.png"), full_page=True)
    print("edit:", page.locator("#edit-message").inner_text().strip())


def main() -> None:
    parser = argparse.ArgumentParser(description="Check the web demo in headless Chromium.")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser binary (Debian's package)")
    parser.add_argument("--out-dir", default="results/browser_check")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per stage")
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
        print(f"screenshots in {args.out_dir}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
