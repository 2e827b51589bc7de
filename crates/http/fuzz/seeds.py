#!/usr/bin/env python3
"""Writes the seed corpus (seeds/<target>/): the review's proof-of-concept bytes (#23) and their
kin. Each seed's first byte picks the size of the pieces the rest arrives in."""
import hashlib, os, sys

here = os.path.dirname(os.path.abspath(__file__))
H = b"hello.default.example.com"

smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: " + H + b"\r\nContent-Length: 7\r\n\r\n"
ext_term = b"%x;\n" % len(smuggled) + b"x" * len(smuggled) + b"\r\n" + smuggled + b"\r\n0\r\n\r\n"

heads = [
    b"GET / HTTP/1.1\r\nHost: " + H + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: " + H + b"\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: " + H + b"\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.0\n\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 05\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    b"CONNECT " + H + b":443 HTTP/1.1\r\nHost: " + H + b"\r\n\r\n",
    b"GET http://a.default.example.com/ HTTP/1.1\r\nHost: b.default.example.com\r\n\r\n",
    b"GET /public#/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]

bodies = [
    ext_term,
    b"5\nhello\n0\n\n",
    b"5 xyz\r\nhello\r\n0\r\n\r\n",
    b"5 6\r\nhello\r\n0\r\n\r\n",
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    b"5;\x00\r\nhello\r\n0\r\n\r\n",
    b'5;a="\x01\r\nhello\r\n0\r\n\r\n',
    b"1;" + b"a" * 4000 + b"\r\nA\r\n" + b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nContent-Length: 999\r\nTransfer-Encoding: chunked\r\nHost: evil.example\r\n"
    b"K-Proxy-Request: activator\r\nX-Ikukantai-Origin: forged\r\nAuthorization: Bearer x\r\n\r\n",
    b"1\r\nA\r\n0\r\nx: " + b"a" * 600 + b"\r\n\r\n",
    b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nserver-timing: 23\r\n\r\n",
    b"3;x=y\r\nabc\r\n2 ; q=\"a;b\\\"c\"\r\nde\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"11111111111111111\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloX\r\n0\r\n\r\n",
    b"0\r\n\r\n",
]

responses = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\nX: a\n\n",
]

for target, seeds in [("request_head", heads), ("chunked_body", bodies), ("response_head", responses)]:
    folder = os.path.join(here, "seeds", target)
    os.makedirs(folder, exist_ok=True)
    for seed in seeds:
        # In pieces of 32 bytes and of one.
        for step in (b"\x1f", b"\x00"):
            data = step + seed
            with open(os.path.join(folder, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
                f.write(data)
