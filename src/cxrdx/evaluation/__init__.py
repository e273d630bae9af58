"""Honest evaluation: patient-grouped CV, patient-bootstrap CIs, calibration, comparisons, benchmark, report."""
