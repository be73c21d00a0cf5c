"""Coming from kohya-ss/sd-scripts: its ``fine_tune.py`` options mapped onto a run TOML
(``sdft from-kohya``)."""
