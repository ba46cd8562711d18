"""Development only, not part of the published pack (``.comfyignore``): the tiny SD model and its
pretraining, the synthetic data set, the diffusers reference host the demo, benchmark and tests
train on, and readers of kohya files for the tests."""
