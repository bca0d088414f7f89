"""The synthesis engine: scheduler (pure Python), runner (torch), and the streams the API reads."""
