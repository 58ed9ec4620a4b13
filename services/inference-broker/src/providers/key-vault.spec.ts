// The module object itself (not a namespace copy), so that jest.spyOn sees the vault's calls.
import crypto from "node:crypto";
import { openTestDatabase, runMigrations, type Database } from "@vlinders/database";
import { ConfigError, createLogger } from "@vlinders/service-runtime";
import { Status, type ServerError } from "nice-grpc-common";
import {
  createKeyVault,
  InvalidProviderKeyError,
  masterKeyId,
  parseMasterKey,
  ProviderKeyExistsError,
  ProviderKeyNotFoundError,
  VaultDecryptError,
  VaultMasterKeyMismatchError,
  type KeyVault,
} from "./key-vault";
import { brokerMigrations, brokerMigrationScope } from "./migrations";

const logger = createLogger({ service: "test", level: "silent" });
const never = new AbortController().signal;

async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error: unknown) {
    return error as Error;
  }
  throw new Error("expected a rejection");
}

function thrownBy(run: () => unknown): Error {
  try {
    run();
  } catch (error: unknown) {
    return error as Error;
  }
  throw new Error("expected a throw");
}

describe("parseMasterKey", () => {
  const bytes = Buffer.from(Array.from({ length: 32 }, (_, index) => index * 7));

  it("reads 64 hex characters", () => {
    expect(parseMasterKey(bytes.toString("hex"))).toEqual(bytes);
    expect(parseMasterKey(bytes.toString("hex").toUpperCase())).toEqual(bytes);
  });

  it("reads base64, standard or URL-safe, with or without padding, ignoring surrounding whitespace", () => {
    expect(parseMasterKey(bytes.toString("base64"))).toEqual(bytes);
    expect(parseMasterKey(bytes.toString("base64url"))).toEqual(bytes);
    expect(parseMasterKey(` ${bytes.toString("base64")}\n`)).toEqual(bytes);
  });

  it.each([
    ["31 bytes of base64", Buffer.alloc(31, 1).toString("base64")],
    ["33 bytes of base64", Buffer.alloc(33, 1).toString("base64")],
    ["62 hex characters", "ab".repeat(31)],
    ["a passphrase", "correct horse battery staple"],
    ["base64 with a stray character", `${bytes.toString("base64").slice(0, 20)}!${bytes.toString("base64").slice(21)}`],
    ["nothing", ""],
  ])("refuses %s with a ConfigError naming VAULT_MASTER_KEY and hiding the value", (_label, value) => {
    const error = thrownBy(() => parseMasterKey(value));
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.message).toBe(
      "invalid configuration: VAULT_MASTER_KEY: must be 32 bytes, written as 64 hex characters or in base64 (openssl rand -base64 32) (value hidden)",
    );
  });
});

describe("createKeyVault on PostgreSQL", () => {
  const masterKey = crypto.randomBytes(32);
  const otherMasterKey = crypto.randomBytes(32);
  let database: Database;
  let vault: KeyVault;

  beforeAll(async () => {
    database = await openTestDatabase({ logger, service: "key-vault-test" });
    await runMigrations(database.pool, { scope: brokerMigrationScope, migrations: brokerMigrations });
    vault = createKeyVault({ pool: database.pool, masterKey });
  });
  afterAll(async () => {
    await database.close();
  });
  afterEach(() => {
    jest.restoreAllMocks();
  });

  async function storedRow(provider: string): Promise<{ ciphertext: Buffer; iv: Buffer; auth_tag: Buffer; key_suffix: string; master_key_id: string }> {
    const { rows } = await database.pool.query("SELECT ciphertext, iv, auth_tag, key_suffix, master_key_id FROM provider_keys WHERE provider = $1", [provider]);
    if (rows[0] === undefined) throw new Error(`no row for ${provider}`);
    return rows[0] as { ciphertext: Buffer; iv: Buffer; auth_tag: Buffer; key_suffix: string; master_key_id: string };
  }

  it("stores a key sealed at rest and gives the plaintext back", async () => {
    const apiKey = "sk-proj-store-and-retrieve-0123456789abcdef";
    const metadata = await vault.store("openai", apiKey, never);
    expect(metadata).toEqual({ provider: "openai", keySuffix: "cdef", createdAt: expect.any(Date), rotatedAt: undefined, encryptedWithCurrentMasterKey: true });
    expect(await vault.retrieve("openai", never)).toBe(apiKey);

    const row = await storedRow("openai");
    expect(row.iv).toHaveLength(12);
    expect(row.auth_tag).toHaveLength(16);
    expect(row.ciphertext).toHaveLength(Buffer.byteLength(apiKey));
    expect(row.ciphertext.toString("utf8")).not.toContain("store-and-retrieve");
    expect(row.key_suffix).toBe("cdef");
    expect(row.master_key_id).toBe(crypto.createHash("sha256").update(masterKey).digest("hex").slice(0, 16));
    expect(masterKeyId(masterKey)).toBe(row.master_key_id);
  });

  it("uses a fresh IV for every encryption", async () => {
    const apiKey = "sk-same-key-for-both-providers";
    await vault.store("iv-a", apiKey, never);
    await vault.store("iv-b", apiKey, never);
    const [a, b] = [await storedRow("iv-a"), await storedRow("iv-b")];
    expect(a.iv.equals(b.iv)).toBe(false);
    expect(a.ciphertext.equals(b.ciphertext)).toBe(false);
  });

  it("refuses to store over an existing key, keeping it", async () => {
    await vault.store("twice", "sk-first-key-000000", never);
    const error = await rejectionOf(vault.store("twice", "sk-second-key-11111", never));
    expect(error).toBeInstanceOf(ProviderKeyExistsError);
    expect(Status[(error as ServerError).code]).toBe("ALREADY_EXISTS");
    expect((error as ServerError).details).toBe('provider "twice" already has an API key; rotate it to replace it');
    expect(await vault.retrieve("twice", never)).toBe("sk-first-key-000000");
  });

  it("rotates a key: new suffix and plaintext, same created_at, rotated_at set", async () => {
    const stored = await vault.store("rotating", "sk-old-key-aaaa1111", never);
    const rotated = await vault.rotate("rotating", "sk-new-key-bbbb2222", never);
    expect(rotated.keySuffix).toBe("2222");
    expect(rotated.createdAt).toEqual(stored.createdAt);
    expect(rotated.rotatedAt).toBeInstanceOf(Date);
    expect(rotated.rotatedAt?.getTime()).toBeGreaterThanOrEqual(stored.createdAt.getTime());
    expect(await vault.retrieve("rotating", never)).toBe("sk-new-key-bbbb2222");
  });

  it("answers NOT_FOUND when rotating, retrieving or deleting a provider without a key", async () => {
    const rotate = await rejectionOf(vault.rotate("nobody", "sk-whatever-123456", never));
    expect(rotate).toBeInstanceOf(ProviderKeyNotFoundError);
    expect(Status[(rotate as ServerError).code]).toBe("NOT_FOUND");
    expect((rotate as ServerError).details).toBe('no API key is stored for provider "nobody"');
    expect(await rejectionOf(vault.retrieve("nobody", never))).toBeInstanceOf(ProviderKeyNotFoundError);
    expect(await vault.delete("nobody", never)).toBe(false);
  });

  it("deletes a key", async () => {
    await vault.store("deleted", "sk-to-be-deleted-999", never);
    expect(await vault.delete("deleted", never)).toBe(true);
    expect(await rejectionOf(vault.retrieve("deleted", never))).toBeInstanceOf(ProviderKeyNotFoundError);
    expect(await vault.delete("deleted", never)).toBe(false);
  });

  it("lists metadata by provider and never a key", async () => {
    await vault.store("list-b", "sk-listed-key-bbbbb-4321", never);
    await vault.store("list-a", "sk-listed-key-aaaaa-8765", never);
    await vault.store("list-short", "abc", never);
    const listed = (await vault.list(never)).filter((entry) => entry.provider.startsWith("list-"));
    expect(listed).toEqual([
      { provider: "list-a", keySuffix: "8765", createdAt: expect.any(Date), rotatedAt: undefined, encryptedWithCurrentMasterKey: true },
      { provider: "list-b", keySuffix: "4321", createdAt: expect.any(Date), rotatedAt: undefined, encryptedWithCurrentMasterKey: true },
      // Four characters of a three-character key would be all of it.
      { provider: "list-short", keySuffix: "", createdAt: expect.any(Date), rotatedAt: undefined, encryptedWithCurrentMasterKey: true },
    ]);
    expect(JSON.stringify(listed)).not.toContain("sk-listed-key");
  });

  it("refuses a wrong master key before decrypting anything, with a clear typed error", async () => {
    await vault.store("mismatch", "sk-sealed-with-the-first-master-key", never);
    const wrongVault = createKeyVault({ pool: database.pool, masterKey: otherMasterKey });
    const decipher = jest.spyOn(crypto, "createDecipheriv");
    const error = await rejectionOf(wrongVault.retrieve("mismatch", never));
    expect(error).toBeInstanceOf(VaultMasterKeyMismatchError);
    expect(Status[(error as ServerError).code]).toBe("FAILED_PRECONDITION");
    expect((error as ServerError).details).toBe(
      'provider keys were encrypted with a different VAULT_MASTER_KEY (the key of provider "mismatch"); start with the master key they were stored with, or rotate the provider\'s key',
    );
    expect(decipher).not.toHaveBeenCalled();
    expect(JSON.stringify({ ...error, message: error.message, stack: error.stack })).not.toContain("sk-sealed");
    const listed = (await wrongVault.list(never)).find((entry) => entry.provider === "mismatch");
    expect(listed?.encryptedWithCurrentMasterKey).toBe(false);
  });

  it("re-keys a row when a vault with a new master key rotates it", async () => {
    await vault.store("rekeyed", "sk-under-the-old-master-key", never);
    const newVault = createKeyVault({ pool: database.pool, masterKey: otherMasterKey });
    await newVault.rotate("rekeyed", "sk-under-the-new-master-key", never);
    expect(await newVault.retrieve("rekeyed", never)).toBe("sk-under-the-new-master-key");
    expect(await rejectionOf(vault.retrieve("rekeyed", never))).toBeInstanceOf(VaultMasterKeyMismatchError);
  });

  it.each([
    ["ciphertext", "ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)"],
    ["auth tag", "auth_tag = set_byte(auth_tag, 15, get_byte(auth_tag, 15) # 1)"],
    ["IV", "iv = set_byte(iv, 0, get_byte(iv, 0) # 1)"],
    ["truncated auth tag", "auth_tag = substring(auth_tag from 1 for 4)"],
  ])("refuses a row whose %s was altered, returning nothing", async (_label, change) => {
    const provider = `tampered-${crypto.randomBytes(3).toString("hex")}`;
    await vault.store(provider, "sk-tamper-target-key-000", never);
    await database.pool.query(`UPDATE provider_keys SET ${change} WHERE provider = $1`, [provider]);
    const error = await rejectionOf(vault.retrieve(provider, never));
    expect(error).toBeInstanceOf(VaultDecryptError);
    expect(Status[(error as ServerError).code]).toBe("DATA_LOSS");
    expect((error as ServerError).details).toBe(
      `the stored API key of provider "${provider}" failed authentication: its row was altered or copied from another provider; rotate the provider's key`,
    );
    expect(JSON.stringify({ ...error, message: error.message, stack: error.stack })).not.toContain("sk-tamper");
  });

  it("binds a ciphertext to its provider: copied into another provider's row it does not open", async () => {
    await vault.store("aad-source", "sk-belongs-to-the-source", never);
    await vault.store("aad-target", "sk-belongs-to-the-target", never);
    await database.pool.query(
      `UPDATE provider_keys AS target SET ciphertext = source.ciphertext, iv = source.iv, auth_tag = source.auth_tag
       FROM provider_keys AS source WHERE source.provider = 'aad-source' AND target.provider = 'aad-target'`,
    );
    expect(await rejectionOf(vault.retrieve("aad-target", never))).toBeInstanceOf(VaultDecryptError);
    expect(await vault.retrieve("aad-source", never)).toBe("sk-belongs-to-the-source");
  });

  it("refuses bad provider names and keys as INVALID_ARGUMENT without echoing the key", async () => {
    const badProvider = await rejectionOf(vault.store("has space", "sk-valid-key-12345", never));
    expect(badProvider).toBeInstanceOf(InvalidProviderKeyError);
    expect(Status[(badProvider as ServerError).code]).toBe("INVALID_ARGUMENT");
    expect((badProvider as ServerError).details).toBe(
      "provider: must be 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (got \"has space\")",
    );
    const empty = await rejectionOf(vault.store("blank", "  \n", never));
    expect((empty as ServerError).details).toBe("apiKey: must not be empty");
    const inner = await rejectionOf(vault.store("inner", "sk-secret part", never));
    expect((inner as ServerError).details).toBe("apiKey: must not contain whitespace or control characters");
    expect(inner.message).not.toContain("sk-secret");
  });

  it("stores a pasted key without its trailing newline", async () => {
    await vault.store("pasted", "sk-pasted-from-a-terminal\n", never);
    expect(await vault.retrieve("pasted", never)).toBe("sk-pasted-from-a-terminal");
  });

  it("rejects with an AbortError when the signal is already aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    expect((await rejectionOf(vault.store("aborted", "sk-never-stored-123", controller.signal))).name).toBe("AbortError");
    expect(await rejectionOf(vault.retrieve("aborted", never))).toBeInstanceOf(ProviderKeyNotFoundError);
  });

  it("copies the master key, so that a caller zeroing its buffer changes nothing", async () => {
    const key = crypto.randomBytes(32);
    const own = createKeyVault({ pool: database.pool, masterKey: key });
    await own.store("copied", "sk-copied-master-key-1", never);
    key.fill(0);
    expect(await own.retrieve("copied", never)).toBe("sk-copied-master-key-1");
  });
});
