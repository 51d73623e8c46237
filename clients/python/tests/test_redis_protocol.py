"""The Redis protocol port (`--resp-addr`) with redis-py, the usual Python Redis client."""

import pytest
import redis

from conftest import ADMIN_TOKEN, TLS, _free_port, _server

READER_TOKEN = "reader-token-0123456789"


def _members(client):
    client.load_customers(
        [{"customer_id": f"C{i}", "attributes": {"vip": i % 3 == 0}} for i in range(30)], batch_size=100
    )
    client.create_segment("vips", rule_text="vip", allow_activities=True)


def test_checks_with_a_reader_token_as_grpc_answers_them(server_bin, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {ADMIN_TOKEN}\nreader {READER_TOKEN}\nloader loader-token-0123456789\n")
    resp = _free_port()
    extra = ["--tokens-file", str(tokens), "--resp-addr", f"127.0.0.1:{resp}"]
    with _server(server_bin, extra, token=ADMIN_TOKEN) as (client, _):
        _members(client)
        for protocol in (2, 3):
            r = redis.Redis(port=resp, password=READER_TOKEN, protocol=protocol, client_name="promo-svc")
            assert r.ping()
            # redis-py decodes the name for RESP2 only, as it does against Redis.
            assert r.client_getname() in ("promo-svc", b"promo-svc")
            for i in range(30):
                assert r.sismember("vips", f"C{i}") == client.is_member(f"C{i}", "vips"), i
            assert r.sismember("vips", "nobody") == 0
            assert r.smismember("vips", ["C0", "C1", "C3", "nobody"]) == [1, 0, 1, 0]
            assert r.scard("vips") == client.get_segment("vips").size == 10
            # A pipeline: one round trip.
            with r.pipeline(transaction=False) as p:
                p.sismember("vips", "C3").sismember("vips", "C4").scard("vips")
                assert p.execute() == [1, 0, 10]
            with pytest.raises(redis.ResponseError, match="no such segment 'nope'"):
                r.scard("nope")
            with pytest.raises(redis.ResponseError, match="unknown command 'SADD'"):
                r.sadd("vips", "C1")
            r.close()

        client.add_to_segment("vips", ["C1"], activity_id="a1")
        assert redis.Redis(port=resp, password=READER_TOKEN).sismember("vips", "C1") == 1

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=resp, password="not-a-token-0123456789").ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis(port=resp, password="loader-token-0123456789").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=resp).scard("vips")


def test_checks_over_mutual_tls(server_bin):
    resp = _free_port()
    extra = [
        "--tls-cert", str(TLS / "server.pem"),
        "--tls-key", str(TLS / "server.key"),
        "--tls-client-ca", str(TLS / "ca.pem"),
        "--resp-addr", f"127.0.0.1:{resp}",
    ]
    identity = {"tls_ca": str(TLS / "ca.pem"), "tls_cert": str(TLS / "client.pem"), "tls_key": str(TLS / "client.key")}
    with _server(server_bin, extra, **identity) as (client, _):
        _members(client)
        r = redis.Redis(
            host="localhost",
            port=resp,
            ssl=True,
            ssl_ca_certs=identity["tls_ca"],
            ssl_certfile=identity["tls_cert"],
            ssl_keyfile=identity["tls_key"],
        )
        assert r.scard("vips") == 10
        assert r.sismember("vips", "C3") == 1
        # Without a client certificate the handshake is refused.
        bare = redis.Redis(host="localhost", port=resp, ssl=True, ssl_ca_certs=identity["tls_ca"])
        with pytest.raises(redis.ConnectionError):
            bare.ping()
