"""Serving: ONNX export and runtime, the REST API with its web page, and the audit log.

Import the pieces you need (``from cxrdx.serve.app import create_app``); this
package itself imports nothing heavy.
"""
