<?php

// examples/php/src/InvalidValue.php: 22P02: a value of the wrong form, e.g. a
// membership level or lane lhdiscord does not know (InvalidSnowflake for
// Discord ids).

declare(strict_types=1);

namespace Lhdiscord;

class InvalidValue extends LhdiscordException
{
}
