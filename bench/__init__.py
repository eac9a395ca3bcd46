"""Side-by-side benchmarks of ftpd against vsftpd, ProFTPD and Pure-FTPd (see bench/README.md)."""
