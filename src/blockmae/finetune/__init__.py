"""Fine-tuning a pretrained encoder end to end (MAE's recipe), resumable like pretraining."""
