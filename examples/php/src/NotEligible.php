<?php

// examples/php/src/NotEligible.php: 42501 "You are not eligible to link a
// Discord account.": the link gate (level below traveler, or in the brig).
// Show the user why they cannot link.

declare(strict_types=1);

namespace Lhdiscord;

class NotEligible extends LhdiscordException
{
}
