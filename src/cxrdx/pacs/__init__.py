"""Hospital integration: DICOM results (Structured Report + Grad-CAM Secondary Capture) and an Orthanc node.

Import the pieces you need (``from cxrdx.pacs.results import build_report``);
this package itself imports nothing heavy.
"""
