/** A provider's id, wherever one is named: the models file, the admin API and the key vault. */
export const providerIdPattern = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** The rule of {@link providerIdPattern}, for error messages. */
export const providerIdRule = '1-128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit';
