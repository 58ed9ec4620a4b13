import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { queryWithSignal } from "@vlinders/database";
import { ConfigError } from "@vlinders/service-runtime";
import { ServerError, Status } from "nice-grpc-common";
import type { Pool } from "pg";
import { providerIdPattern } from "./provider-id";

/**
 * What the vault tells about a stored key: never the key, only its last four characters so that an
 * operator can tell which one is in place.
 */
export interface ProviderKeyMetadata {
  provider: string;
  /** The last 4 characters of the key; empty for keys shorter than 8, where 4 would be half of it. */
  keySuffix: string;
  createdAt: Date;
  /** When the key was last replaced; undefined if never (as in the proto's ProviderKeyInfo). */
  rotatedAt: Date | undefined;
  /** False when the key was sealed with another VAULT_MASTER_KEY: `retrieve` fails until it is rotated. */
  encryptedWithCurrentMasterKey: boolean;
}

/** API keys of remote OpenAI-compatible providers, sealed with AES-256-GCM in PostgreSQL. */
export interface KeyVault {
  /** Seals and stores a provider's first key; ALREADY_EXISTS if it has one (use `rotate`). */
  store(provider: string, apiKey: string, signal: AbortSignal): Promise<ProviderKeyMetadata>;
  /** Replaces a provider's key, keeping its created_at; NOT_FOUND if it has none. */
  rotate(provider: string, apiKey: string, signal: AbortSignal): Promise<ProviderKeyMetadata>;
  /** The plaintext key, for dispatching a request to the provider and nothing else. Never log it. */
  retrieve(provider: string, signal: AbortSignal): Promise<string>;
  /** Whether there was a key to delete. */
  delete(provider: string, signal: AbortSignal): Promise<boolean>;
  /** Every stored key's metadata, by provider name. */
  list(signal: AbortSignal): Promise<ProviderKeyMetadata[]>;
}

/** Errors of the vault, each a gRPC status the error boundary passes on as it is. */
export abstract class KeyVaultError extends ServerError {}

/** NOT_FOUND: no key is stored for the provider. */
export class ProviderKeyNotFoundError extends KeyVaultError {
  override name = "ProviderKeyNotFoundError";
  constructor(readonly provider: string) {
    super(Status.NOT_FOUND, `no API key is stored for provider "${provider}"`);
  }
}

/** ALREADY_EXISTS: `store` for a provider that has a key. */
export class ProviderKeyExistsError extends KeyVaultError {
  override name = "ProviderKeyExistsError";
  constructor(readonly provider: string) {
    super(Status.ALREADY_EXISTS, `provider "${provider}" already has an API key; rotate it to replace it`);
  }
}

/** INVALID_ARGUMENT: a provider name or key the vault does not accept. The message never shows the key. */
export class InvalidProviderKeyError extends KeyVaultError {
  override name = "InvalidProviderKeyError";
  constructor(message: string) {
    super(Status.INVALID_ARGUMENT, message);
  }
}

/**
 * FAILED_PRECONDITION: the stored key was sealed with another master key. Detected from the key id
 * stored beside it, before any decryption is attempted.
 */
export class VaultMasterKeyMismatchError extends KeyVaultError {
  override name = "VaultMasterKeyMismatchError";
  constructor(readonly provider: string) {
    super(
      Status.FAILED_PRECONDITION,
      `provider keys were encrypted with a different VAULT_MASTER_KEY (the key of provider "${provider}"); start with the master key they were stored with, or rotate the provider's key`,
    );
  }
}

/**
 * DATA_LOSS: the stored row fails authentication: it was altered, or its ciphertext was moved from
 * another provider's row. Nothing decrypted is returned.
 */
export class VaultDecryptError extends KeyVaultError {
  override name = "VaultDecryptError";
  constructor(readonly provider: string) {
    super(
      Status.DATA_LOSS,
      `the stored API key of provider "${provider}" failed authentication: its row was altered or copied from another provider; rotate the provider's key`,
    );
  }
}

const masterKeyBytes = 32;
const ivBytes = 12;
const authTagBytes = 16;
const providerName = providerIdPattern;
const maxApiKeyLength = 4096;

/**
 * Reads VAULT_MASTER_KEY: 32 bytes written as 64 hex characters or as base64 (standard or URL-safe,
 * padding optional). Anything else throws a ConfigError naming the variable, never its value.
 */
export function parseMasterKey(value: string): Buffer {
  const text = value.trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  // Buffer.from skips characters outside the alphabet: check them first so that a typo is refused.
  if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) {
    const key = Buffer.from(text, "base64");
    if (key.length === masterKeyBytes) return key;
  }
  throw new ConfigError(
    "invalid configuration: VAULT_MASTER_KEY: must be 32 bytes, written as 64 hex characters or in base64 (openssl rand -base64 32) (value hidden)",
  );
}

/** The first 16 hex characters of the master key's SHA-256: names it in rows without revealing it. */
export function masterKeyId(masterKey: Buffer): string {
  return createHash("sha256").update(masterKey).digest("hex").slice(0, 16);
}

interface KeyRow {
  provider: string;
  key_suffix: string;
  master_key_id: string;
  created_at: Date;
  rotated_at: Date | null;
}

/**
 * The key vault over the broker's `provider_keys` table. Each key is sealed with AES-256-GCM under
 * the master key, with a fresh random 12-byte IV, and with the provider's name as additional
 * authenticated data, so that a ciphertext copied into another provider's row fails to open. The
 * vault logs nothing; its errors name the provider, never a key.
 */
export function createKeyVault(options: { pool: Pool; masterKey: Buffer }): KeyVault {
  const { pool } = options;
  if (options.masterKey.length !== masterKeyBytes) throw new Error(`createKeyVault: the master key must be ${masterKeyBytes} bytes`);
  // A copy, so that a caller reusing or zeroing its buffer cannot change the key under the vault.
  const masterKey = Buffer.from(options.masterKey);
  const keyId = masterKeyId(masterKey);

  function seal(provider: string, apiKey: string): { ciphertext: Buffer; iv: Buffer; authTag: Buffer } {
    const iv = randomBytes(ivBytes);
    const cipher = createCipheriv("aes-256-gcm", masterKey, iv, { authTagLength: authTagBytes });
    cipher.setAAD(Buffer.from(provider, "utf8"));
    const ciphertext = Buffer.concat([cipher.update(apiKey, "utf8"), cipher.final()]);
    return { ciphertext, iv, authTag: cipher.getAuthTag() };
  }

  function open(provider: string, row: { ciphertext: Buffer; iv: Buffer; auth_tag: Buffer }): string {
    // Wrong lengths would make setAuthTag throw, or accept a truncated tag: treat them as tampering.
    if (row.iv.length !== ivBytes || row.auth_tag.length !== authTagBytes) throw new VaultDecryptError(provider);
    try {
      const decipher = createDecipheriv("aes-256-gcm", masterKey, row.iv, { authTagLength: authTagBytes });
      decipher.setAAD(Buffer.from(provider, "utf8"));
      decipher.setAuthTag(row.auth_tag);
      // update() yields bytes before final() has checked the tag: they are kept only if it passes.
      const plaintext = Buffer.concat([decipher.update(row.ciphertext), decipher.final()]);
      return plaintext.toString("utf8");
    } catch {
      throw new VaultDecryptError(provider);
    }
  }

  function toMetadata(row: KeyRow): ProviderKeyMetadata {
    return {
      provider: row.provider,
      keySuffix: row.key_suffix,
      createdAt: row.created_at,
      rotatedAt: row.rotated_at ?? undefined,
      encryptedWithCurrentMasterKey: row.master_key_id === keyId,
    };
  }

  const returning = "RETURNING provider, key_suffix, master_key_id, created_at, rotated_at";

  return {
    async store(provider, apiKey, signal) {
      checkProvider(provider);
      const key = checkApiKey(apiKey);
      const sealed = seal(provider, key);
      const result = await queryWithSignal<KeyRow>(
        pool,
        `INSERT INTO provider_keys (provider, ciphertext, iv, auth_tag, key_suffix, master_key_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (provider) DO NOTHING ${returning}`,
        [provider, sealed.ciphertext, sealed.iv, sealed.authTag, suffixOf(key), keyId],
        signal,
      );
      const row = result.rows[0];
      if (row === undefined) throw new ProviderKeyExistsError(provider);
      return toMetadata(row);
    },

    async rotate(provider, apiKey, signal) {
      checkProvider(provider);
      const key = checkApiKey(apiKey);
      const sealed = seal(provider, key);
      // Sealing under the current master key also re-keys a row stored under an older one.
      const result = await queryWithSignal<KeyRow>(
        pool,
        `UPDATE provider_keys
         SET ciphertext = $2, iv = $3, auth_tag = $4, key_suffix = $5, master_key_id = $6, rotated_at = now()
         WHERE provider = $1 ${returning}`,
        [provider, sealed.ciphertext, sealed.iv, sealed.authTag, suffixOf(key), keyId],
        signal,
      );
      const row = result.rows[0];
      if (row === undefined) throw new ProviderKeyNotFoundError(provider);
      return toMetadata(row);
    },

    async retrieve(provider, signal) {
      checkProvider(provider);
      const result = await queryWithSignal<{ ciphertext: Buffer; iv: Buffer; auth_tag: Buffer; master_key_id: string }>(
        pool,
        "SELECT ciphertext, iv, auth_tag, master_key_id FROM provider_keys WHERE provider = $1",
        [provider],
        signal,
      );
      const row = result.rows[0];
      if (row === undefined) throw new ProviderKeyNotFoundError(provider);
      if (row.master_key_id !== keyId) throw new VaultMasterKeyMismatchError(provider);
      return open(provider, row);
    },

    async delete(provider, signal) {
      checkProvider(provider);
      const result = await queryWithSignal(pool, "DELETE FROM provider_keys WHERE provider = $1", [provider], signal);
      return (result.rowCount ?? 0) > 0;
    },

    async list(signal) {
      const result = await queryWithSignal<KeyRow>(
        pool,
        "SELECT provider, key_suffix, master_key_id, created_at, rotated_at FROM provider_keys ORDER BY provider",
        [],
        signal,
      );
      return result.rows.map(toMetadata);
    },
  };
}

function checkProvider(provider: string): void {
  if (!providerName.test(provider)) {
    throw new InvalidProviderKeyError(
      `provider: must be 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (got ${JSON.stringify(provider.slice(0, 140))})`,
    );
  }
}

/** The key as it will be sent: surrounding whitespace (a pasted newline) removed. */
function checkApiKey(apiKey: string): string {
  const key = apiKey.trim();
  if (key === "") throw new InvalidProviderKeyError("apiKey: must not be empty");
  if (key.length > maxApiKeyLength) throw new InvalidProviderKeyError(`apiKey: must be at most ${maxApiKeyLength} characters`);
  // It travels in an Authorization header, where these cannot go.
  if (/[\s\p{Cc}]/u.test(key)) throw new InvalidProviderKeyError("apiKey: must not contain whitespace or control characters");
  return key;
}

function suffixOf(key: string): string {
  return key.length >= 8 ? key.slice(-4) : "";
}
