"""Make a local test certificate chain for Content Credentials (C2PA) signing: a root CA and a leaf
signing certificate it issues, both EC P-256 (ES256). For development and tests only: nobody else trusts
this root, so a verifier shows the images' credentials as valid but untrusted unless it is told to trust it.

C2PA verifiers (and the c2pa library that signs) refuse a bare self-signed certificate: the signing
certificate must be issued by a CA, must not be a CA itself, and must carry the digitalSignature key usage
and an extended key usage C2PA accepts (emailProtection here).

    .venv/bin/python scripts/make_test_chain.py /tmp/atelier-c2pa
    ATELIER_C2PA_KEY_FILE=/tmp/atelier-c2pa/signer.key ATELIER_C2PA_CHAIN_FILE=/tmp/atelier-c2pa/chain.pem make serve

Writes into the directory: `root.pem` (the test root: the trust anchor a verifier is given), `chain.pem`
(the leaf, then the root: ATELIER_C2PA_CHAIN_FILE) and `signer.key` (the leaf's private key, PKCS#8 PEM,
unencrypted, mode 0600: ATELIER_C2PA_KEY_FILE).
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANISATION = "Atelier development (test only)"


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION)])


def usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates (keyCertSign, cRLSign); the leaf signs manifests (digitalSignature)."""
    return x509.KeyUsage(digital_signature=not signs_certificates, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=signs_certificates,
                         crl_sign=signs_certificates, encipher_only=False, decipher_only=False)


def make_chain(days: int) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """(root, leaf, the leaf's key). The root's key is thrown away: this root issues this one leaf only."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)  # a little slack for clocks that differ
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = name("Atelier test root CA")
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=days + 1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("Atelier test signer")).issuer_name(root.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    return root, leaf, leaf_key


def write_chain(directory: Path, days: int = 30) -> dict[str, Path]:
    """Write root.pem, chain.pem and signer.key into `directory`; returns their paths by name."""
    directory.mkdir(parents=True, exist_ok=True)
    root, leaf, key = make_chain(days)
    pem = serialization.Encoding.PEM
    paths = {"root": directory / "root.pem", "chain": directory / "chain.pem", "key": directory / "signer.key"}
    paths["root"].write_bytes(root.public_bytes(pem))
    paths["chain"].write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    key_bytes = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_bytes)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write root.pem, chain.pem and signer.key")
    parser.add_argument("--days", type=int, default=30, help="the leaf's validity (default 30 days)")
    arguments = parser.parse_args()
    paths = write_chain(arguments.directory, arguments.days)
    print(f"ATELIER_C2PA_KEY_FILE={paths['key']} ATELIER_C2PA_CHAIN_FILE={paths['chain']}")
    print(f"trust anchor for verifiers: {paths['root']}")


if __name__ == "__main__":
    main()
