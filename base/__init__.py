"""The base layer: minimal definitions every other package may import.

Like rclone's ``fs`` (the definitions every backend imports) and its ``lib``
(small shared helpers), this package uses the standard library only and
imports nothing of the project, so ``config``, ``connectors``, ``storage``,
``backup``, ``tasks`` and ``workers`` can all build on it without arrows
pointing back up:

* ``errors``: the two error families (retryable / fatal), decided in one place;
* ``identifiers``: table and column names checked before they reach SQL;
* ``text``: control characters, UTC timestamps and run ids shared by the workflows;
* ``urls``: the scheme of a location URL;
* ``fanout``: which error of several parallel failures to raise.
"""
