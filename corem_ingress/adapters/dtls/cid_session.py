"""One DTLS session's Connection ID state (RFC 9146): the CIDs of both directions, the
epoch-1 keys, our record writer and the replay window. Pure: bytes in, bytes out.

During the handshake OpenSSL still runs the Finished exchange, so epoch-1 records are
*re-protected* between the two formats with the same keys and sequence numbers: the
client's ``tls12_cid`` Finished becomes a plain record OpenSSL can read, and OpenSSL's
plain Finished becomes a ``tls12_cid`` record for the client. Once the handshake is
complete OpenSSL is out of the record path: ``protect`` / ``unprotect`` do it all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corem_ingress.adapters.dtls import cid

#: Records from the client kept while OpenSSL has not yet computed the master secret.
MAX_BACKLOG = 16


@dataclass(eq=False)
class CidSession:
    #: The CID the peer asked us to put in our records; empty: none.
    peer_cid: bytes
    #: The CID we asked for, what the peer puts in its records; empty: none.
    own_cid: bytes = b""
    suite: cid.AeadSuite | None = None
    reader: cid.RecordCipher | None = None
    writer: cid.RecordCipher | None = None
    window: cid.ReplayWindow = field(default_factory=cid.ReplayWindow)
    #: Our next epoch-1 sequence number once we write records ourselves.
    write_seq: int = 0
    #: Epoch-1 records of the client that came before the keys could be derived.
    backlog: list[bytes] = field(default_factory=list)
    #: Our last handshake flight (ChangeCipherSpec + Finished), as sent: resent when the
    #: client retransmits its own (ours was lost) after we consider the session up.
    last_flight: list[bytes] = field(default_factory=list)

    @property
    def keyed(self) -> bool:
        return self.reader is not None

    def set_keys(
        self,
        suite_id: int,
        master: bytes,
        client_random: bytes,
        server_random: bytes,
        *,
        client: bool = False,
    ) -> bool:
        """Derive the epoch-1 keys (RFC 5246 6.3); False for a suite we cannot protect.
        ``client``: we are the client (the simulator's device): we write with the client
        key and read with the server's."""
        suite = cid.SUITES.get(suite_id)
        if suite is None or not master:
            return False
        keys = cid.KeyBlock.derive(suite, master, client_random, server_random)
        theirs = cid.RecordCipher(suite, keys.client_key, keys.client_salt)
        ours = cid.RecordCipher(suite, keys.server_key, keys.server_salt)
        if client:
            theirs, ours = ours, theirs
        self.suite = suite
        self.reader, self.writer = theirs, ours
        return True

    # -- handshake: between OpenSSL's format and the wire's ---------------------------------
    def incoming_for_openssl(self, record: bytes) -> bytes:
        """A client ``tls12_cid`` record as the plain record OpenSSL expects. One whose tag
        does not verify keeps its bytes under a plain header: OpenSSL drops it as it drops
        any record with a bad MAC (the handshake's wrong-key judgement counts it)."""
        assert self.reader is not None
        epoch, seq = cid.record_epoch_seq(record)
        try:
            opened = self.reader.open(record, len(self.own_cid))
        except cid.BadRecord:
            body = record[13 + len(self.own_cid) :]
            return bytes([22]) + record[1:11] + len(body).to_bytes(2, "big") + body
        self.window.accept(seq)
        explicit = record[13 + len(self.own_cid) : 21 + len(self.own_cid)]
        return self.reader.seal(opened.content_type, epoch, seq, opened.payload, None, explicit)

    def outgoing_from_openssl(self, record: bytes) -> bytes:
        """OpenSSL's plain epoch-1 record as a ``tls12_cid`` record with the client's CID
        (unchanged when the client asked for none: RFC 9146 3)."""
        assert self.writer is not None
        epoch, seq = cid.record_epoch_seq(record)
        self.write_seq = max(self.write_seq, seq + 1)
        if not self.peer_cid:
            return record
        opened = self.writer.open(record, 0)
        explicit = record[13:21]
        return self.writer.seal(
            opened.content_type, epoch, seq, opened.payload, self.peer_cid, explicit
        )

    # -- established: our own record layer ---------------------------------------------------
    def protect(self, content_type: int, payload: bytes) -> bytes:
        assert self.writer is not None
        seq = self.write_seq
        self.write_seq += 1
        return self.writer.seal(content_type, 1, seq, payload, self.peer_cid or None)

    def unprotect(self, record: bytes) -> tuple[cid.OpenedRecord, bool] | None:
        """(the record, whether it is newer than every record before it), or None for a
        record to drop: not epoch 1, not ours, a replay, or a bad tag."""
        assert self.reader is not None
        if record[3:5] != b"\x00\x01":
            return None  # only epoch 1 exists after the handshake (no renegotiation)
        seq = int.from_bytes(record[5:11], "big")
        if not self.window.check(seq):
            return None
        own = self.own_cid
        if record[0] == cid.CT_TLS12_CID:
            if not own or record[11 : 11 + len(own)] != own:
                return None
        elif own:
            return None  # we issued a CID: every protected record must carry it
        try:
            opened = self.reader.open(record, len(self.own_cid))
        except cid.BadRecord:
            return None
        return opened, self.window.accept(seq)
