"""sdft's engine: everything a fine-tune needs, with no user interface.

The wizard (``sdft_tui``) and the headless CLI both drive this package. Modules the
wizard needs before training starts (config, data scanning and bucketing, the planner,
events, control) never import torch, so the wizard opens instantly.
"""

__version__ = "0.1.0"
