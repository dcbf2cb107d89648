-- A release's OpenSSF Model Signing signature (`model.sig`): a Sigstore
-- bundle over every file's SHA-256, signed with the portal's model-signing
-- key at publication. NULL for a release published before; the portal signs
-- those from their signed manifest when asked.
ALTER TABLE releases ADD COLUMN model_sig TEXT;
