"""The bed process itself: TLS identity and endpoints."""

from __future__ import annotations

import hashlib
import ssl

import pytest

from testbed.vsphere.bed import VsphereBed

pytestmark = pytest.mark.vsphere


def test_tls_identity_matches_the_thumbprints(vsphere_bed: VsphereBed) -> None:
    host, port = vsphere_bed.host.rsplit(":", 1)
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port))))
    assert hashlib.sha1(der).hexdigest().upper() == vsphere_bed.thumbprint_sha1.replace(":", "")
    assert hashlib.sha256(der).hexdigest().upper() == vsphere_bed.thumbprint_sha256.replace(":", "")
    resp = vsphere_bed.http_session().get(f"https://{vsphere_bed.host}/about", timeout=10)
    assert resp.status_code == 200  # verified against ca_file, not the environment's bundle
