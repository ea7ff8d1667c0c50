// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "2d1b099e753512fd1da1419ae93c6ff4f7d6b3565dd448e0c3af0712d4580b5f"
