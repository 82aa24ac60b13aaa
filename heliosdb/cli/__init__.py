"""The ``heliosdb`` command line: the terminal front end of the library, in its own room.

* :mod:`heliosdb.cli.shell`: the sqlite3-style SQL shell (APSW's shell on a HeliosDB
  connection);
* :mod:`heliosdb.cli.commands`: the subcommands for scripts (``info``, ``verify``,
  ``audit``, ``export``, ``encrypt``, ``decrypt``, ``rekey``, ``passwd``, ``purge``,
  ``report``, ``demo``);
* :mod:`heliosdb.cli.common`: what both share (errors and exit statuses, keys, opening
  databases, the calls into the encryption and audit APIs).

``heliosdb`` / ``python -m heliosdb`` start at :func:`heliosdb.__main__.main`. The library
never imports this package.
"""
