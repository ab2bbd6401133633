"""A real DNS server on loopback for the unit tests: UDP on 127.0.0.1 at a free port, answered in a thread.
A subclass says what each question gets (`answer`); the server parses, replies and stops with its socket."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.resolver
import dns.rrset


class LoopbackDNS:
    """Answers each query with what `answer` puts in the response (NOERROR and nothing, unless it says)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            self.answer(query.question[0], response)
            self.sock.sendto(response.to_wire(), peer)

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver that asks this server only."""
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], self.port, 2.0
        return r

    def close(self) -> None:
        self.sock.close()
