# PGXN metadata (issue 15): META.json is valid by the PGXN Meta Spec 1.0.0
# and consistent with the distribution (lhdiscord.control's default_version,
# src/lhdiscord.h's LHD_VERSION and LHD_PROJECT_URL, the install scripts),
# as test/meta_check.pl checks it; and the checker has teeth: each way of
# breaking a copy of the distribution is reported, with its reason.
# No server is needed.
use strict;
use warnings;

use Cwd ();
use File::Copy qw(copy);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use FindBin;
use JSON::PP;
use Test::More;

my $checker = "$FindBin::RealBin/../meta_check.pl";
# test/run runs this from its work directory (a copy of the project's sql/,
# expected/ and test/); run by hand it is the project root.
my $root = Cwd::abs_path("$FindBin::RealBin/../..");
my @files = ('META.json', 'lhdiscord.control', 'src/lhdiscord.h');

sub run_checker
{
	my ($dir) = @_;
	my $out = `"$^X" "$checker" "$dir" 2>&1`;
	return ($? >> 8, $out);
}

my @missing = grep { !-f "$root/$_" } @files;
ok(!@missing, "the distribution's files are in $root")
  or diag("missing: @missing. test/run's work directory holds only sql/, expected/ and test/: "
	  . "lhd_make_workdir in test/lib.sh must also copy META.json, lhdiscord.control and src/lhdiscord.h");
if (@missing)
{
	done_testing();
	exit 0;
}

my ($rc, $out) = run_checker($root);
is($rc, 0, 'META.json of the distribution is valid') or diag($out);
like($out, qr/^META\.json: valid \(PGXN Meta Spec 1\.0\.0; lhdiscord \d+\.\d+\.\d+,/m, 'the checker says so');

# The versions agree, read here independently of the checker.
sub slurp { open(my $fh, '<:raw', $_[0]) or die "$_[0]: $!"; local $/; return scalar <$fh>; }
my $meta = JSON::PP->new->utf8->decode(slurp("$root/META.json"));
my ($default) = slurp("$root/lhdiscord.control") =~ /^default_version\s*=\s*'([^']+)'/m;
my ($lhd_version) = slurp("$root/src/lhdiscord.h") =~ /^#define\s+LHD_VERSION\s+"([^"]+)"/m;
is($meta->{version}, $default, "META.json version is lhdiscord.control's default_version ($default)");
is($meta->{provides}{lhdiscord}{version}, $default, 'provides.lhdiscord.version too');
is($lhd_version, $default, 'and LHD_VERSION of src/lhdiscord.h');
is($meta->{prereqs}{runtime}{requires}{PostgreSQL}, '15.0.0', 'runtime prerequisite: PostgreSQL 15.0.0');
is($meta->{'meta-spec'}{version}, '1.0.0', 'meta-spec 1.0.0');

# A scratch copy of the distribution, broken one way at a time.
my $scratch = tempdir('lhd_meta_XXXX', TMPDIR => 1, CLEANUP => 1);
my $case = 0;

sub broken_copy
{
	my (%how) = @_;
	my $dir = "$scratch/case" . ++$case;
	make_path("$dir/src", "$dir/sql");
	copy("$root/$_", "$dir/$_") or die "copy $_: $!" for @files;
	copy($_, "$dir/sql/") or die "copy $_: $!" for glob("$root/sql/lhdiscord--*.sql");
	if (my $edit = $how{meta})
	{
		my $m = JSON::PP->new->utf8->decode(slurp("$dir/META.json"));
		$edit->($m);
		open(my $fh, '>:raw', "$dir/META.json") or die $!;
		print $fh JSON::PP->new->utf8->canonical->pretty->encode($m);
		close($fh);
	}
	if (my $text = $how{meta_text})
	{
		open(my $fh, '>:raw', "$dir/META.json") or die $!;
		print $fh $text;
		close($fh);
	}
	for my $f (grep { exists $how{$_} } @files)
	{
		my $text = slurp("$dir/$f");
		$how{$f}->($text);    # edits $text in place
		open(my $fh, '>:raw', "$dir/$f") or die $!;
		print $fh $text;
		close($fh);
	}
	return $dir;
}

sub rejects
{
	my ($name, $re, %how) = @_;
	my $dir = broken_copy(%how);
	my ($rc, $out) = run_checker($dir);
	ok($rc == 1 && $out =~ $re, "rejected: $name") or diag("exit $rc:\n$out");
}

# An unbroken copy passes (the cases below fail for their own reason only).
($rc, $out) = run_checker(broken_copy());
is($rc, 0, 'an unchanged copy is valid') or diag($out);

rejects('not JSON', qr/not valid JSON/, meta_text => "{ \"name\": \"lhdiscord\", }\n");
rejects('an array at the top', qr/top level must be an object/, meta_text => "[]\n");
for my $k (qw(name abstract version maintainer license provides meta-spec))
{
	rejects("no $k", qr/required key "\Q$k\E" is missing/, meta => sub { delete $_[0]{$k} });
}
rejects('version 0.6 (not semver)', qr/version "0\.6" is not a semantic version/,
	meta => sub { $_[0]{version} = '0.6' });
rejects('version 01.6.0 (leading zero)', qr/is not a semantic version/,
	meta => sub { $_[0]{version} = '01.6.0' });
rejects('version a number, not a string', qr/is not a semantic version/,
	meta => sub { $_[0]{version} = 6 });
rejects('version ahead of the control file', qr/version "9\.9\.9" differs from default_version/,
	meta => sub { $_[0]{version} = '9.9.9' });
rejects('provides.lhdiscord.version behind', qr/provides\.lhdiscord\.version "0\.5\.0" differs from default_version/,
	meta => sub { $_[0]{provides}{lhdiscord}{version} = '0.5.0' });
rejects('provides without file', qr/provides\.lhdiscord\.file is missing/,
	meta => sub { delete $_[0]{provides}{lhdiscord}{file} });
rejects('provides file not in the distribution', qr/provides\.lhdiscord\.file "sql\/nope\.sql" does not exist/,
	meta => sub { $_[0]{provides}{lhdiscord}{file} = 'sql/nope.sql' });
rejects('provides abstract unlike the control comment', qr/provides\.lhdiscord\.abstract differs/,
	meta => sub { $_[0]{provides}{lhdiscord}{abstract} = 'Something else' });
rejects('provides empty', qr/provides must be a non-empty object/, meta => sub { $_[0]{provides} = {} });
rejects('provides without lhdiscord', qr/provides has no "lhdiscord" extension/,
	meta => sub { $_[0]{provides} = { other => delete $_[0]{provides}{lhdiscord} } });
rejects('a license the spec does not know', qr/license "gpl" is not one the spec knows/,
	meta => sub { $_[0]{license} = 'gpl' });
rejects('license an empty array', qr/license must not be an empty array/, meta => sub { $_[0]{license} = [] });
rejects('maintainer an empty array', qr/maintainer must not be an empty array/, meta => sub { $_[0]{maintainer} = [] });
rejects('maintainer a number', qr/maintainer must be a string/, meta => sub { $_[0]{maintainer} = 7 });
rejects('meta-spec 1.0.1', qr/meta-spec\.version must be "1\.0\.0"/, meta => sub { $_[0]{'meta-spec'}{version} = '1.0.1' });
rejects('an unknown key', qr/unknown key "homepage"/, meta => sub { $_[0]{homepage} = 'https://example.org' });
rejects('PostgreSQL 14 as the runtime prerequisite', qr/PostgreSQL must be "15\.0\.0"/,
	meta => sub { $_[0]{prereqs}{runtime}{requires}{PostgreSQL} = '14.0.0' });
rejects('a prerequisite that is no version range', qr/prereqs\.runtime\.requires\.PostgreSQL "15" is not a version range/,
	meta => sub { $_[0]{prereqs}{runtime}{requires}{PostgreSQL} = '15' });
rejects('an unknown prereqs phase', qr/prereqs: unknown key "install"/,
	meta => sub { $_[0]{prereqs}{install} = {} });
rejects('release_status beta', qr/release_status must be stable, testing or unstable/,
	meta => sub { $_[0]{release_status} = 'beta' });
rejects('tags a string', qr/tags must be a non-empty array/, meta => sub { $_[0]{tags} = 'discord' });
rejects('a repository elsewhere', qr/resources\.repository\.web must be LHD_PROJECT_URL/,
	meta => sub { $_[0]{resources}{repository}{web} = 'https://example.org/fork' });
rejects('a repository type that is no string', qr/resources\.repository\.type must be a string/,
	meta => sub { $_[0]{resources}{repository}{type} = [] });
rejects('LHD_VERSION unlike default_version', qr/LHD_VERSION "9\.9\.9" of src\/lhdiscord\.h differs/,
	'src/lhdiscord.h' => sub { $_[0] =~ s/(#define\s+LHD_VERSION\s+)"[^"]*"/$1"9.9.9"/ or die });
rejects('default_version with no install script', qr/no install script reaches version 9\.9\.9/,
	'lhdiscord.control' => sub { $_[0] =~ s/default_version = '[^']*'/default_version = '9.9.9'/ or die });

# Custom keys are allowed, and the range syntax of the spec is understood.
($rc, $out) = run_checker(broken_copy(meta => sub {
	$_[0]{x_ci} = { debian => ['bookworm', 'trixie'] };
	$_[0]{prereqs}{build}{requires} = { PostgreSQL => '>= 15.0.0, != 16.0.0', libcurl => '0' };
	$_[0]{license} = { 'PostgreSQL License' => 'https://www.postgresql.org/about/licence/' };
}));
is($rc, 0, 'x_ keys, version ranges and a license object are valid') or diag($out);

done_testing();
