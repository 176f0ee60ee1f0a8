/* test-names.c: snapshot name escaping, table-driven. */
#include "virtsnapfs.h"

typedef struct {
  const char *name;
  const char *entry;
} NameCase;

static const NameCase cases[] = {
  { "s1", "s1" },
  { "with space", "with space" },
  { "ünïcødé", "ünïcødé" },
  { "a/b", "a%2Fb" },
  { "/", "%2F" },
  { "100%", "100%25" },
  { "%", "%25" },
  { "%2F", "%252F" },
  { ".hidden", "%2Ehidden" },
  { ".", "%2E" },
  { "..", "%2E." },
  { "a.b", "a.b" },
  { "@now", "%40now" },
  { "@", "%40" },
  { "a@b", "a@b" },
  { "x.", "x." },
  { ".%/@", "%2E%25%2F@" },
};

static void
test_escape_table(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *entry = names_escape(cases[i].name);
    g_autofree char *back = names_unescape(cases[i].entry);
    g_assert_cmpstr(entry, ==, cases[i].entry);
    g_assert_cmpstr(back, ==, cases[i].name);
  }
}

static void
test_unescape_refuses(void)
{
  /* Entries that names_escape() never writes have no snapshot. */
  static const char *const bad[] = {
    "", ".", "..", ".x", "@now", "@x", "a/b", "%", "%2", "%2f", "%41", "a%2Eb", "a%40b",
    "x%", "%zz",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autofree char *name = names_unescape(bad[i]);
    if (name != NULL)
      g_error("'%s' decoded to '%s'", bad[i], name);
  }
}

static void
test_roundtrip_random(void)
{
  /* Every string over an alphabet rich in specials survives the trip, and
   * the entry is never ".", "..", hidden, '@'-led or contains '/'. */
  static const char alphabet[] = "./%@aZ 2F";
  GRand *rand = g_rand_new_with_seed(42);
  for (int i = 0; i < 20000; i++) {
    char name[8];
    int len = g_rand_int_range(rand, 1, (int)sizeof name);
    for (int j = 0; j < len; j++)
      name[j] = alphabet[g_rand_int_range(rand, 0, (int)sizeof alphabet - 1)];
    name[len] = '\0';
    g_autofree char *entry = names_escape(name);
    g_autofree char *back = names_unescape(entry);
    g_assert_cmpstr(back, ==, name);
    g_assert_null(strchr(entry, '/'));
    g_assert_true(entry[0] != '.' && entry[0] != '@');
  }
  g_rand_free(rand);
}

static void
test_disk_file(void)
{
  g_autofree char *target = NULL;
  g_assert_true(names_is_disk_file("vda.raw", ".raw", &target));
  g_assert_cmpstr(target, ==, "vda");
  g_assert_false(names_is_disk_file(".raw", ".raw", NULL));
  g_assert_false(names_is_disk_file("vda.delta", ".raw", NULL));
  g_assert_false(names_is_disk_file("snapshot.xml", ".raw", NULL));
}

int
main(int argc, char *argv[])
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/names/escape-table", test_escape_table);
  g_test_add_func("/names/unescape-refuses", test_unescape_refuses);
  g_test_add_func("/names/roundtrip-random", test_roundtrip_random);
  g_test_add_func("/names/disk-file", test_disk_file);
  return g_test_run();
}
