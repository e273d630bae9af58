"""cxrdx: COVID-19 detection on chest X-rays with a hybrid CNN-RNN."""

__version__ = "0.1.0"


def explain(model, image, method: str = "gradcam", target_class=None, **kw):
    """Grad-CAM heatmap + overlay + prediction for one X-ray: see :func:`cxrdx.explain.cam.explain`.

    Imported lazily so that ``import cxrdx`` stays light (no torch).
    """
    from .explain.cam import explain as _explain

    return _explain(model, image, method=method, target_class=target_class, **kw)
