#!/usr/bin/perl
# test/meta_check.pl: validate META.json against the PGXN Meta Spec 1.0.0
# (https://pgxn.org/spec/) and against the rest of the distribution.
#
#   perl test/meta_check.pl [DIST_ROOT]
#
# DIST_ROOT defaults to the directory above this script (the project root,
# or test/run's work directory).  It must hold META.json, lhdiscord.control,
# src/lhdiscord.h and sql/.  Checked:
#  - the spec: required keys (abstract, license, maintainer, meta-spec, name,
#    provides, version) and the type of every key; optional keys (description,
#    generated_by, no_index, prereqs, release_status, resources, tags) typed
#    as the spec says; no other key but x_/X_ custom ones; semantic versions
#    (SemVer 1.0.0, as the spec requires) wherever a version is given; the
#    license names the spec knows; meta-spec.version 1.0.0;
#  - the distribution: version == provides.lhdiscord.version ==
#    default_version of lhdiscord.control == LHD_VERSION of src/lhdiscord.h;
#    provides.lhdiscord.abstract == the control file's comment; every
#    provides file exists; an install script reaches default_version
#    (sql/lhdiscord--V.sql or an upgrade script sql/lhdiscord--X--V.sql);
#    prereqs.runtime.requires.PostgreSQL is 15.0.0 (the oldest supported
#    major); resources point at LHD_PROJECT_URL of src/lhdiscord.h.
# Prints one line per problem and exits 1, or "META.json: valid ..." and 0.
use strict;
use warnings;

use B;
use FindBin;
use JSON::PP;

my $root = $ARGV[0] // "$FindBin::RealBin/..";
my @problems;

sub problem { push @problems, join('', @_); }

sub slurp
{
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or return undef;
	local $/;
	my $text = <$fh>;
	close($fh);
	return $text;
}

# A JSON string (JSON::PP decodes numbers to numeric scalars: a string has
# only its string value).
sub is_string
{
	my ($v) = @_;
	return 0 if !defined($v) || ref($v) || JSON::PP::is_bool($v);
	my $flags = B::svref_2object(\$v)->FLAGS;
	return ($flags & B::SVp_POK) && !($flags & (B::SVp_IOK | B::SVp_NOK));
}
sub is_object { return ref($_[0]) eq 'HASH'; }
sub is_array { return ref($_[0]) eq 'ARRAY'; }

# SemVer 1.0.0 (the spec's "Version" type): MAJOR.MINOR.PATCH, no leading
# zeros, optionally a special version starting with a letter (PGXN also
# takes it after a hyphen).
sub is_semver
{
	my ($v) = @_;
	return is_string($v)
	  && $v =~ /^(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)(?:-?[A-Za-z][0-9A-Za-z-]*)?$/;
}

# The spec's "Version Range": "0", a version, or comma-separated
# "<op> <version>" terms.
sub is_version_range
{
	my ($v) = @_;
	return 0 unless is_string($v);
	return 1 if $v eq '0' || is_semver($v);
	for my $term (split /\s*,\s*/, $v, -1)
	{
		return 0 unless $term =~ /^(?:==|!=|>=|<=|>|<)\s*(\S+)$/ && is_semver($1);
	}
	return 1;
}

sub check_keys
{
	my ($where, $obj, %allowed) = @_;
	for my $k (sort keys %$obj)
	{
		next if $k =~ /^[xX]_/;
		problem("$where: unknown key \"$k\" (custom keys start with x_)") unless exists $allowed{$k};
	}
}

sub check_string
{
	my ($where, $v) = @_;
	if (!is_string($v)) { problem("$where must be a string"); return 0; }
	if ($v eq '') { problem("$where must not be empty"); return 0; }
	return 1;
}

# A string, or a non-empty array of strings.
sub check_string_or_list
{
	my ($where, $v) = @_;
	return check_string($where, $v) unless is_array($v);
	problem("$where must not be an empty array") unless @$v;
	check_string("$where\[$_\]", $v->[$_]) for 0 .. $#$v;
}

my %LICENSES = map { $_ => 1 } qw(
  agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd freebsd gfdl_1_2
  gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1
  openssl perl_5 postgresql qpl_1_0 ssleay sun zlib open_source restricted
  unrestricted unknown);

my %TOP = map { $_ => 1 } qw(abstract description generated_by license maintainer
  meta-spec name no_index prereqs provides release_status resources tags version);

sub check_spec
{
	my ($m) = @_;

	for my $k (qw(abstract license maintainer meta-spec name provides version))
	{
		problem("required key \"$k\" is missing") unless exists $m->{$k};
	}
	check_keys('META.json', $m, %TOP);

	check_string('name', $m->{name})
	  and $m->{name} !~ /^[A-Za-z0-9][A-Za-z0-9_-]*$/
	  and problem("name \"$m->{name}\" must be letters, digits, _ and -");
	check_string('abstract', $m->{abstract}) if exists $m->{abstract};
	problem("version \"" . ($m->{version} // 'null') . "\" is not a semantic version")
	  if exists $m->{version} && !is_semver($m->{version});
	check_string_or_list('maintainer', $m->{maintainer}) if exists $m->{maintainer};

	if (exists $m->{license})
	{
		my $l = $m->{license};
		if (is_object($l))
		{
			problem('license must not be an empty object') unless %$l;
			check_string("license.$_", $l->{$_}) for sort keys %$l;
		}
		else
		{
			my @names = is_array($l) ? @$l : ($l);
			problem('license must not be an empty array') unless @names;
			for my $n (@names)
			{
				problem("license \"" . (is_string($n) ? $n : '?') . "\" is not one the spec knows")
				  unless is_string($n) && $LICENSES{$n};
			}
		}
	}

	if (exists $m->{'meta-spec'})
	{
		my $ms = $m->{'meta-spec'};
		if (!is_object($ms)) { problem('meta-spec must be an object'); }
		else
		{
			check_keys('meta-spec', $ms, version => 1, url => 1);
			problem('meta-spec.version must be "1.0.0"')
			  unless is_string($ms->{version}) && $ms->{version} eq '1.0.0';
			check_string('meta-spec.url', $ms->{url}) if exists $ms->{url};
		}
	}

	if (exists $m->{provides})
	{
		my $p = $m->{provides};
		if (!is_object($p) || !%$p) { problem('provides must be a non-empty object'); }
		else
		{
			for my $ext (sort keys %$p)
			{
				my $e = $p->{$ext};
				if (!is_object($e)) { problem("provides.$ext must be an object"); next; }
				check_keys("provides.$ext", $e, file => 1, version => 1, abstract => 1, docfile => 1);
				problem("provides.$ext.file is missing") unless exists $e->{file};
				problem("provides.$ext.version is missing") unless exists $e->{version};
				check_string("provides.$ext.file", $e->{file}) if exists $e->{file};
				problem("provides.$ext.version \"" . ($e->{version} // 'null') . "\" is not a semantic version")
				  if exists $e->{version} && !is_semver($e->{version});
				for my $k (qw(abstract docfile))
				{
					check_string("provides.$ext.$k", $e->{$k}) if exists $e->{$k};
				}
			}
		}
	}

	for my $k (qw(description generated_by))
	{
		check_string($k, $m->{$k}) if exists $m->{$k};
	}
	if (exists $m->{release_status})
	{
		problem('release_status must be stable, testing or unstable')
		  unless is_string($m->{release_status}) && $m->{release_status} =~ /^(?:stable|testing|unstable)$/;
	}
	if (exists $m->{tags})
	{
		if (!is_array($m->{tags}) || !@{ $m->{tags} }) { problem('tags must be a non-empty array'); }
		else
		{
			for my $i (0 .. $#{ $m->{tags} })
			{
				my $t = $m->{tags}[$i];
				check_string("tags[$i]", $t) and length($t) > 255 and problem("tags[$i] is longer than 255 characters");
			}
		}
	}
	if (exists $m->{no_index})
	{
		my $n = $m->{no_index};
		if (!is_object($n)) { problem('no_index must be an object'); }
		else
		{
			check_keys('no_index', $n, file => 1, directory => 1);
			check_string_or_list("no_index.$_", $n->{$_}) for grep { exists $n->{$_} } qw(file directory);
		}
	}
	if (exists $m->{prereqs})
	{
		my $pr = $m->{prereqs};
		if (!is_object($pr)) { problem('prereqs must be an object'); }
		else
		{
			check_keys('prereqs', $pr, map { $_ => 1 } qw(configure build test runtime develop));
			for my $phase (sort grep { !/^[xX]_/ } keys %$pr)
			{
				my $ph = $pr->{$phase};
				if (!is_object($ph)) { problem("prereqs.$phase must be an object"); next; }
				check_keys("prereqs.$phase", $ph, map { $_ => 1 } qw(requires recommends suggests conflicts));
				for my $rel (sort grep { !/^[xX]_/ } keys %$ph)
				{
					my $r = $ph->{$rel};
					if (!is_object($r)) { problem("prereqs.$phase.$rel must be an object"); next; }
					for my $dep (sort keys %$r)
					{
						problem("prereqs.$phase.$rel.$dep \"" . ($r->{$dep} // 'null') . "\" is not a version range")
						  unless is_version_range($r->{$dep});
					}
				}
			}
		}
	}
	if (exists $m->{resources})
	{
		my $r = $m->{resources};
		if (!is_object($r)) { problem('resources must be an object'); }
		else
		{
			check_keys('resources', $r, homepage => 1, bugtracker => 1, repository => 1);
			check_string('resources.homepage', $r->{homepage}) if exists $r->{homepage};
			for my $k (qw(bugtracker repository))
			{
				next unless exists $r->{$k};
				my $o = $r->{$k};
				if (!is_object($o)) { problem("resources.$k must be an object"); next; }
				my @keys = $k eq 'bugtracker' ? qw(web mailto) : qw(url web type);
				check_keys("resources.$k", $o, map { $_ => 1 } @keys);
				check_string("resources.$k.$_", $o->{$_}) for grep { exists $o->{$_} } @keys;
			}
		}
	}
}

# The distribution's own files.
sub check_dist
{
	my ($m) = @_;
	my $name = is_string($m->{name}) ? $m->{name} : 'lhdiscord';

	my $control = slurp("$root/$name.control");
	my $header = slurp("$root/src/lhdiscord.h");
	problem("$root/$name.control is missing") unless defined $control;
	problem("$root/src/lhdiscord.h is missing") unless defined $header;
	return unless defined $control && defined $header;

	my ($default) = $control =~ /^\s*default_version\s*=\s*'([^']*)'/m;
	my ($comment) = $control =~ /^\s*comment\s*=\s*'((?:[^']|'')*)'/m;
	my ($lhd_version) = $header =~ /^#define\s+LHD_VERSION\s+"([^"]*)"/m;
	my ($url) = $header =~ /^#define\s+LHD_PROJECT_URL\s+"([^"]*)"/m;
	problem("$name.control has no default_version") unless defined $default;
	problem('src/lhdiscord.h has no LHD_VERSION') unless defined $lhd_version;
	return unless defined $default && defined $lhd_version;
	$comment =~ s/''/'/g if defined $comment;

	problem("default_version '$default' of $name.control is not a semantic version") unless is_semver($default);
	problem("LHD_VERSION \"$lhd_version\" of src/lhdiscord.h differs from default_version '$default' of $name.control")
	  unless $lhd_version eq $default;
	problem("version \"" . ($m->{version} // 'null') . "\" differs from default_version '$default' of $name.control")
	  unless is_string($m->{version}) && $m->{version} eq $default;

	my $p = is_object($m->{provides}) ? $m->{provides} : {};
	my $e = $p->{$name};
	if (!is_object($e)) { problem("provides has no \"$name\" extension"); }
	else
	{
		problem("provides.$name.version \"" . ($e->{version} // 'null') . "\" differs from default_version '$default' of $name.control")
		  unless is_string($e->{version}) && $e->{version} eq $default;
		problem("provides.$name.abstract differs from the comment of $name.control")
		  if defined $comment && !(is_string($e->{abstract}) && $e->{abstract} eq $comment);
	}
	for my $ext (sort keys %$p)
	{
		for my $k (qw(file docfile))
		{
			my $f = is_object($p->{$ext}) ? $p->{$ext}{$k} : undef;
			problem("provides.$ext.$k \"$f\" does not exist in the distribution")
			  if is_string($f) && $f ne '' && !-f "$root/$f";
		}
	}

	my @scripts = glob("$root/sql/$name--*.sql");
	problem("no install script reaches version $default (sql/$name--$default.sql or sql/$name--X--$default.sql)")
	  unless grep { m{/\Q$name\E--(?:[^/]*--)?\Q$default\E\.sql$} } @scripts;

	my $pg = is_object($m->{prereqs}) && is_object($m->{prereqs}{runtime})
	  && is_object($m->{prereqs}{runtime}{requires}) ? $m->{prereqs}{runtime}{requires}{PostgreSQL} : undef;
	problem("prereqs.runtime.requires.PostgreSQL must be \"15.0.0\" (the oldest supported major), not \""
		  . ($pg // 'missing') . '"')
	  unless is_string($pg) && $pg eq '15.0.0';

	if (defined $url)
	{
		my $r = is_object($m->{resources}) ? $m->{resources} : {};
		my $repo = is_object($r->{repository}) ? $r->{repository} : {};
		problem("resources.homepage must be LHD_PROJECT_URL ($url)")
		  unless is_string($r->{homepage}) && $r->{homepage} eq $url;
		problem("resources.repository.web must be LHD_PROJECT_URL ($url)")
		  unless is_string($repo->{web}) && $repo->{web} eq $url;
	}
}

my $text = slurp("$root/META.json");
if (!defined $text)
{
	print "META.json: $root/META.json is missing\n";
	exit 1;
}
my $meta = eval { JSON::PP->new->utf8->relaxed(0)->decode($text) };
if (!defined $meta)
{
	my $err = $@ || 'no value';
	$err =~ s/\s+$//;
	print "META.json: not valid JSON: $err\n";
	exit 1;
}
if (!is_object($meta))
{
	print "META.json: the top level must be an object\n";
	exit 1;
}
check_spec($meta);
check_dist($meta);

if (@problems)
{
	print "META.json: $_\n" for @problems;
	exit 1;
}
printf "META.json: valid (PGXN Meta Spec 1.0.0; %s %s, consistent with %s.control and src/lhdiscord.h)\n",
  $meta->{name}, $meta->{version}, $meta->{name};
exit 0;
