"""omniretain: churn prevention and next-best-action for omnichannel retailers.

This package holds what every stage shares: typed settings, the command line and the simulator.
The stages themselves live in the top-level packages ``features``, ``training``, ``serving`` and
``monitoring``.
"""

__version__ = "0.1.0"
