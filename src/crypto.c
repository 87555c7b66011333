/*-------------------------------------------------------------------------
 *
 * crypto.c
 *	  Token encryption at rest, randomness and hashing (OpenSSL libcrypto).
 *
 * Owns the AES-256-GCM envelope for OAuth tokens: a fresh 96-bit random
 * nonce per value, a 128-bit tag, and additional authenticated data that
 * binds each ciphertext to its account and column, so a ciphertext copied
 * onto another row or column fails to decrypt.  Layout of the stored bytea:
 *
 *	  byte 0       format version (1)
 *	  bytes 1-12   nonce
 *	  bytes 13-28  GCM tag
 *	  bytes 29-    ciphertext
 *
 * The key comes from lhdiscord.encryption_key (64 hex digits).  Plaintext
 * and key material are wiped from memory once used; no error message ever
 * contains either.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "utils/builtins.h"

#include "lhdiscord.h"

#define ENVELOPE_VERSION	1
#define NONCE_LEN			12
#define TAG_LEN				16
#define HEADER_LEN			(1 + NONCE_LEN + TAG_LEN)
#define KEY_LEN				32

bool
lhd_encryption_key_configured(void)
{
	return lhd_encryption_key != NULL && lhd_encryption_key[0] != '\0';
}

static void
load_key(unsigned char *key)
{
	const char *hex = lhd_encryption_key;

	if (!lhd_encryption_key_configured())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lhdiscord.encryption_key is not set"),
				 errdetail("OAuth tokens are stored encrypted and cannot be saved or read without a key."),
				 errhint("Set lhdiscord.encryption_key to 64 hexadecimal digits in postgresql.conf.")));
	/* The GUC check hook guarantees exactly 64 hex digits. */
	for (int i = 0; i < KEY_LEN; i++)
	{
		unsigned int v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			elog(ERROR, "lhdiscord: malformed encryption key");
		key[i] = (unsigned char) v;
	}
}

/* Overwrite a secret C string in place (NULL is fine). */
void
lhd_wipe(char *s)
{
	if (s)
		explicit_bzero(s, strlen(s));
}

static void
random_bytes(unsigned char *buf, size_t len)
{
	if (RAND_bytes(buf, (int) len) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes")));
}

/* nbytes of randomness as a URL-safe lowercase hex string. */
char *
lhd_random_token(size_t nbytes)
{
	unsigned char *raw = palloc(nbytes);
	char	   *out = palloc(nbytes * 2 + 1);

	random_bytes(raw, nbytes);
	hex_encode((const char *) raw, nbytes, out);
	out[nbytes * 2] = '\0';
	pfree(raw);
	return out;
}

char *
lhd_sha256_hex(const char *data, size_t len)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char	   *out;

	if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute SHA-256 digest")));
	out = palloc(mdlen * 2 + 1);
	hex_encode((const char *) md, mdlen, out);
	out[mdlen * 2] = '\0';
	return out;
}

bytea *
lhd_encrypt_token(const char *plaintext, const char *aad)
{
	unsigned char key[KEY_LEN];
	size_t		ptlen = strlen(plaintext);
	bytea	   *result;
	unsigned char *out;
	EVP_CIPHER_CTX *ctx;
	int			len = 0;
	int			ok;

	load_key(key);
	result = palloc(VARHDRSZ + HEADER_LEN + ptlen);
	SET_VARSIZE(result, VARHDRSZ + HEADER_LEN + ptlen);
	out = (unsigned char *) VARDATA(result);
	out[0] = ENVELOPE_VERSION;
	random_bytes(out + 1, NONCE_LEN);

	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
		EVP_EncryptInit_ex(ctx, NULL, NULL, key, out + 1) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *) aad, (int) strlen(aad)) == 1 &&
		EVP_EncryptUpdate(ctx, out + HEADER_LEN, &len,
						  (const unsigned char *) plaintext, (int) ptlen) == 1 &&
		EVP_EncryptFinal_ex(ctx, out + HEADER_LEN + len, &len) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, out + 1 + NONCE_LEN) == 1;
	EVP_CIPHER_CTX_free(ctx);
	OPENSSL_cleanse(key, sizeof(key));
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not encrypt token")));
	return result;
}

/*
 * Decrypt an envelope; NULL (never an ERROR, never a message) when the key
 * is missing or wrong, or the value was altered or moved.
 */
static char *
decrypt_envelope(bytea *ciphertext, const char *aad)
{
	unsigned char key[KEY_LEN];
	const unsigned char *in = (const unsigned char *) VARDATA_ANY(ciphertext);
	size_t		inlen = VARSIZE_ANY_EXHDR(ciphertext);
	size_t		ctlen;
	char	   *plain;
	EVP_CIPHER_CTX *ctx;
	int			len = 0;
	int			ok;

	if (inlen < HEADER_LEN || in[0] != ENVELOPE_VERSION || !lhd_encryption_key_configured())
		return NULL;
	load_key(key);
	ctlen = inlen - HEADER_LEN;
	plain = palloc(ctlen + 1);

	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, in + 1) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *) aad, (int) strlen(aad)) == 1 &&
		EVP_DecryptUpdate(ctx, (unsigned char *) plain, &len, in + HEADER_LEN, (int) ctlen) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN,
							(void *) (in + 1 + NONCE_LEN)) == 1 &&
		EVP_DecryptFinal_ex(ctx, (unsigned char *) plain + len, &len) == 1;
	EVP_CIPHER_CTX_free(ctx);
	OPENSSL_cleanse(key, sizeof(key));
	if (!ok)
	{
		OPENSSL_cleanse(plain, ctlen + 1);
		pfree(plain);
		return NULL;
	}
	plain[ctlen] = '\0';
	return plain;
}

/* For the worker: NULL instead of an error. */
char *
lhd_decrypt_token_soft(bytea *ciphertext, const char *aad)
{
	return decrypt_envelope(ciphertext, aad);
}

/*
 * Decrypt an envelope written by lhd_encrypt_token with the same aad.
 * Raises (without revealing anything) when the key is missing or wrong, or
 * the value was tampered with or moved.
 */
char *
lhd_decrypt_token(bytea *ciphertext, const char *aad)
{
	char	   *plain;

	if (!lhd_encryption_key_configured())
		load_key(NULL);			/* raises "lhdiscord.encryption_key is not set" */
	plain = decrypt_envelope(ciphertext, aad);
	if (plain == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("stored token could not be decrypted"),
				 errdetail("The encryption key differs from the one used to store it, or the value was altered.")));
	return plain;
}

/*
 * Additional authenticated data binding a token ciphertext to its account
 * and column: a ciphertext moved elsewhere does not decrypt.
 */
char *
lhd_token_aad(const char *column, const char *discord_user_id)
{
	return psprintf("lhdiscord:%s:%s", column, discord_user_id);
}
