"""Layer 3: a loaded model and inputs to result rows, the Python API: the Classifier, the row schema, heat-maps and
Ray."""
