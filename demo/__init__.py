"""The web demo's back end (app.py lays out the page): input checks, class names, the loaded model and the
page's actions. Importable without gradio, so the tests run it; the library never imports it."""
