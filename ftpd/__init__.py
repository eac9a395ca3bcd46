"""ftpd: a production FTP daemon for Linux built on pyftpdlib."""

__version__ = "0.1.0"
