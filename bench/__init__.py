"""The benchmark harness: authproxy against a bare aiohttp proxy and nginx, on loopback, in one run.

`python -m bench` (or `make bench`) starts every server (`stack`), drives them with wrk (`wrk`) and a
fixed-rate generator (`loadgen`), meters each server's CPU and memory from /proc (`procstat`,
`measure`), runs the session-check, memory and streaming checks (`checks`), and writes the results
(`report`, `tables`). bench/README.md describes the method and shows the latest full run.
"""
