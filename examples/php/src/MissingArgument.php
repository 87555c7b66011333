<?php

// examples/php/src/MissingArgument.php: 22004 "<argument> must not be null":
// a NULL where lhdiscord needs a value (e.g. a guest's null actor id).

declare(strict_types=1);

namespace Lhdiscord;

class MissingArgument extends LhdiscordException
{
}
