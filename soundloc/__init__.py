"""soundloc: real-time sound source localization with an audio-visual classifier.

Importing soundloc (or soundloc.runtime) never imports torch; only soundloc.model, training
and export do.
"""

__version__ = "0.1.0"
